"""The demo's re-ranker step (tools/pipeline.py calls it after the DELG training): extract the
synthetic training set with the trained DELG, train the learned re-ranker on it twice (float16 and
binary database codes) and name the weights and the methods the evaluation adds.

    weights = reranker_step(options, timer, cfg, checkpoint)  # {} with --no-reranker
    eval_cfg = with_rerankers(eval_cfg, weights)   # + learned, learned_binary, dba_qe+learned

The training images are the DELG training split (train_clean.csv), the first IMAGES_PER_LANDMARK of
each landmark (written as OUT/reranker/train_subset.csv), extracted like the test set (same model,
scales and selection: the provenance check of the `learned` method compares them). The recipe is
configs/reranker/synthetic_demo.yaml; lambda and gamma are chosen on held-out training landmarks,
never on the test set. OUT/reranker belongs to one DELG checkpoint (its sha256 in
OUT/reranker/delg.json): for the same checkpoint the store and the trainings are reused or
continued, for another one they are done again.
"""

import os
import shutil

from core.config import load_cfg
from core.io import read_json, write_json, write_text
from datasets.gldv2 import CLEAN_HEADER, read_gldv2_csv
from tools.extraction.provenance import checkpoint_digest
from tools.pipeline import REPO, extract, extraction_config

RERANKER_CONFIG = str(REPO / "configs" / "reranker" / "synthetic_demo.yaml")
IMAGES_PER_LANDMARK = 10  # of the 18 per landmark: the extraction's share of the demo's minutes
TRAIN_STORE = "synth_train"
LEARNED_METHODS = ("learned", "learned_binary", "dba_qe+learned")


def training_subset(labels_csv, path, per_landmark=IMAGES_PER_LANDMARK):
    """Write a train_clean.csv of the first ``per_landmark`` images of each landmark (the images
    extracted and trained on); return how many images it lists."""
    landmarks = sorted(read_gldv2_csv(labels_csv).items())
    lines = [f"{landmark},{' '.join(images[:per_landmark])}\n" for landmark, images in landmarks]
    write_text(path, ",".join(CLEAN_HEADER) + "\n" + "".join(lines))
    return sum(min(len(images), per_landmark) for _, images in landmarks)


def extract_training_store(cfg, checkpoint, out, log=print):
    """(the training subset's store: global + local with the trained DELG, its labels CSV), in
    OUT/reranker."""
    folder = os.path.join(out, "reranker")
    labels = os.path.join(folder, "train_subset.csv")
    count = training_subset(os.path.join(cfg.TRAIN.DATA_ROOT, cfg.TRAIN.SPLIT), labels)
    log(f"[demo] re-ranker: extracting {count} training images")
    extract_cfg = extraction_config(cfg, checkpoint, os.path.join(folder, "features"))
    extract_cfg.EXTRACT.FORMAT = "gldv2"
    extract_cfg.EXTRACT.DATASET = TRAIN_STORE
    extract_cfg.EXTRACT.DATA_ROOT = os.path.join(cfg.TRAIN.DATA_ROOT, "train")
    extract_cfg.EXTRACT.SPLIT = labels
    return os.path.join(extract(extract_cfg), TRAIN_STORE), labels


def reranker_config(recipe, store, labels, out_dir, seed, binary):
    return load_cfg(
        recipe,
        [
            "RERANKER.TRAIN.STORE",
            store,
            "RERANKER.TRAIN.LABELS",
            labels,
            "RERANKER.BINARY",
            str(binary),
            "RNG_SEED",
            str(seed),
            "OUT_DIR",
            out_dir,
        ],
    )


def reset_for(checkpoint, out):
    """Empty OUT/reranker unless it was made with this DELG checkpoint; True when it was."""
    folder, digest = os.path.join(out, "reranker"), checkpoint_digest(checkpoint)
    marker = os.path.join(folder, "delg.json")
    if os.path.isfile(marker) and read_json(marker).get("sha256") == digest:
        return True
    shutil.rmtree(folder, ignore_errors=True)
    write_json(marker, {"checkpoint": checkpoint, "sha256": digest})
    return False


def train_demo_rerankers(cfg, checkpoint, out, seed, recipe=RERANKER_CONFIG, log=print):
    """{"WEIGHTS": the float16 model, "BINARY_WEIGHTS": the binary model} (RERANKER.* keys)."""
    from tools.reranker.training import train_reranker

    store = os.path.join(out, "reranker", "features", TRAIN_STORE)
    labels = os.path.join(out, "reranker", "train_subset.csv")
    if not (reset_for(checkpoint, out) and os.path.isfile(os.path.join(store, "meta.json"))):
        store, labels = extract_training_store(cfg, checkpoint, out, log)
    weights = {}
    for key, binary in (("WEIGHTS", False), ("BINARY_WEIGHTS", True)):
        run_dir = os.path.join(out, "reranker", "binary" if binary else "float16")
        log(f"[demo] re-ranker: training the {'binary' if binary else 'float16'} model")
        weights[key] = train_reranker(reranker_config(recipe, store, labels, run_dir, seed, binary))
    return weights


def with_rerankers(eval_cfg, weights, recipe=RERANKER_CONFIG):
    """The evaluation config with the trained re-rankers, the recipe's local budgets and batch, and
    the re-ranker's methods (once each); unchanged without weights."""
    if not weights:
        return eval_cfg
    eval_cfg = eval_cfg.clone()
    section = load_cfg(recipe).RERANKER
    for key in ("N_QUERY", "N_DATABASE", "BATCH_SIZE"):
        eval_cfg.RERANKER[key] = section[key]
    for key, path in weights.items():
        eval_cfg.RERANKER[key] = path
    eval_cfg.RERANKER.CODES_DIR = os.path.join(eval_cfg.OUT_DIR, "reranker", "codes")
    shutil.rmtree(eval_cfg.RERANKER.CODES_DIR, ignore_errors=True)  # an earlier demo's codes
    methods = list(eval_cfg.EVAL.METHODS)
    eval_cfg.EVAL.METHODS = methods + [name for name in LEARNED_METHODS if name not in methods]
    return eval_cfg


def reranker_step(options, timer, cfg, checkpoint, log=print):
    """The demo's re-rankers (train_demo_rerankers) timed as the step "re-ranker"; {} with
    --no-reranker (DemoOptions.reranker False)."""
    if not options.reranker:
        return {}
    out, seed, recipe = options.out_dir, options.seed, recipe_of(options)
    return timer.run("re-ranker", train_demo_rerankers, cfg, checkpoint, out, seed, recipe, log=log)


def recipe_of(options):
    """The re-ranker's config file: --reranker-cfg, else RERANKER_CONFIG."""
    return options.reranker_config or RERANKER_CONFIG
