"""The end-to-end demo, step by step: synthetic landmarks -> train -> extract -> evaluate -> table
and pictures.

    summary = run_demo(DemoOptions(out_dir="output/demo", seed=0))
    print(report(summary))

1. data: the embedded synthetic world (datasets/synthetic/), generated once per seed and size,
   then reused;
2. train: the recipe of the config (configs/synthetic/demo.yaml) for a fixed number of iterations,
   so that the numbers do not depend on the machine's speed; with TRAIN.RETRIEVAL_EVAL the trainer
   logs the retrieval mAP; a training of the same config found in OUT/train (an interrupted or
   finished demo) is continued, not redone;
3. extract: the test set's features with the trained model (global + local) and with the same
   network at its seeded initial weights (global only: the baseline row ``untrained_global``);
4. evaluate: EVAL.METHODS on the trained features (global search, spatial verification, ASMK) and
   global search on the untrained ones; results.json has the evaluation's layout plus the method
   ``untrained_global``;
5. pictures (tools/vis/demo_pictures.py): training curves, attention of two queries, and the inlier
   matches between the query that spatial verification helped most and its best re-ranked positive.

Every step calls the library the command-line tools call (trainer, extraction runner, evaluation
methods, tools/vis) with the one config; nothing is tuned for the demo here.
"""

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import torch

from core.checkpoint import config_differences, list_checkpoints
from core.config import load_cfg
from core.distributed import available_cores
from core.io import read_json, write_json
from datasets.synthetic import generate, make_spec
from tools.demo_runs import (
    CONTINUE,
    DemoStopped,
    all_runs_timing,
    forget_stopped_runs,
    record_stopped_run,
    stop_on_signals,
)
from tools.demo_timing import StepTimer
from tools.revisitop.protocols import PROTOCOLS
from tools.vis.demo_pictures import draw_pictures

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(REPO / "configs" / "synthetic" / "demo.yaml")
UNTRAINED = "untrained_global"
# the steps after the training (extraction twice, evaluation, pictures) took 117 s for the 440 test
# images of the default world on 2 cores (docs/demo.md): the ETA's guess until a run measures them
AFTER_TRAINING_S_PER_IMAGE = 0.27
BEFORE_TRAINING = ("data", "train")


@dataclasses.dataclass
class DemoOptions:
    """What the demo runs; the defaults are the documented demo."""

    out_dir: str = "output/demo"
    config: str = DEFAULT_CONFIG
    iters: int = 0  # training iterations; 0 keeps the config's OPTIM.MAX_ITER
    seed: int = 0  # seeds the synthetic world and the training (weights, data order, augmentation)
    # the synthetic world; "" = REPO/data/synthetic[_<size>][_seed<S>] (default_data_dir)
    data_dir: str = ""
    data_size: str = "default"  # datasets.synthetic.SIZES preset
    threads: int = 0  # torch threads; 0 = the cores this process may use
    opts: tuple = ()  # extra KEY VALUE config overrides
    reranker: bool = True  # train and evaluate the learned re-ranker (tools/pipeline_reranker.py)
    reranker_config: str = ""  # its recipe; "" = configs/reranker/synthetic_demo.yaml


# ------------------------------------------------------------------------------------------ helpers
def default_data_dir(seed, size="default"):
    """REPO/data/synthetic for the default world; other sizes and seeds get their own folder beside
    it."""
    name = (
        "synthetic" + (f"_{size}" if size != "default" else "") + (f"_seed{seed}" if seed else "")
    )
    return str(REPO / "data" / name)


# ------------------------------------------------------------------------------------------ 1. data
def ensure_synthetic(data_dir, seed, size="default", workers=1, log=print):
    """Generate the synthetic world in data_dir unless it is there already with this seed and
    size."""
    info_path = os.path.join(data_dir, "info.json")
    if os.path.isfile(info_path):
        info = read_json(info_path)
        if info.get("seed") != seed or info.get("spec") != dataclasses.asdict(make_spec(size)):
            raise ValueError(
                f"{data_dir} holds the synthetic world of seed {info.get('seed')} with sizes "
                f"{info.get('spec')}, not the {size!r} world of seed {seed}; pass another folder "
                f"(--data) or remove it"
            )
        log(f"[demo] synthetic landmarks: {data_dir} (seed {seed}, generated before)")
        return info
    log(f"[demo] generating the synthetic landmarks (seed {seed}) in {data_dir}")
    return generate(data_dir, seed=seed, size=size, workers=workers)


def demo_config(options, data_dir):
    """The config: the file, the world's folders, the seed and the iterations, then the user's
    overrides; the training always goes to OUT/train (train() decides whether what is there is
    continued or replaced)."""
    test_root = os.path.join(data_dir, "test")
    opts = [
        "TRAIN.DATA_ROOT",
        os.path.join(data_dir, "train"),
        "EXTRACT.DATA_ROOT",
        test_root,
        "EVAL.DATA_ROOT",
        test_root,
        "RNG_SEED",
        str(options.seed),
    ]
    if options.iters:
        opts += ["OPTIM.MAX_ITER", str(options.iters)]
    cfg = load_cfg(options.config, opts + list(options.opts))
    cfg.OUT_DIR = os.path.join(options.out_dir, "train")
    if (
        0 < cfg.OPTIM.MAX_ITER < cfg.LOG_PERIOD
    ):  # a short run still logs (and plots) its last iteration
        cfg.LOG_PERIOD = cfg.OPTIM.MAX_ITER
    return cfg


# ----------------------------------------------------------------------------------------- 2. train
# Keys the trainer fills in or the demo sets itself, and the sections that only extraction and
# evaluation read: they may differ between the saved and the new config.
RESUME_IGNORED_KEYS = ("MODEL.NUM_CLASSES", "TRAIN.AUTO_RESUME", "TRAIN.ETA_EXTRA_S")
RESUME_IGNORED_SECTIONS = ("EXTRACT.", "EVAL.", "SV.", "ASMK.", "RERANK.", "RERANKER.", "TEST.")


def same_training(cfg):
    """Whether cfg.OUT_DIR holds checkpoints of a training with this very config: an interrupted (or
    finished) earlier demo, which exact resume continues to the same weights."""
    saved = os.path.join(cfg.OUT_DIR, "config.yaml")
    if not (os.path.isfile(saved) and list_checkpoints(cfg.OUT_DIR)):
        return False
    with open(saved) as handle:
        differences = config_differences(handle.read(), cfg.dump())
    return all(
        key in RESUME_IGNORED_KEYS or key.startswith(RESUME_IGNORED_SECTIONS)
        for key, _, _ in differences
    )


def train(cfg, log=print):
    """Train in this process with cfg; return the path of the final checkpoint. A training of the
    same config in cfg.OUT_DIR is continued from its newest checkpoint; anything else there is
    replaced."""
    from core import trainer

    cfg = cfg.clone()
    if same_training(cfg):
        newest = list_checkpoints(cfg.OUT_DIR)[-1][0]
        if newest == cfg.OPTIM.MAX_ITER:
            log(
                f"[demo] {cfg.OUT_DIR} holds this training, finished at iteration {newest}: "
                "reusing its model"
            )
        else:
            log(f"[demo] {cfg.OUT_DIR} holds this training up to iteration {newest}: continuing it")
    else:
        # another run's checkpoints and log lines would mix in
        shutil.rmtree(cfg.OUT_DIR, ignore_errors=True)
    cfg.TRAIN.AUTO_RESUME = True  # what a preempted run checkpointed, the same command continues
    from tools.revisitop.validation import build_retrieval_validator

    code = trainer.train_in_process(cfg.dump(), [build_retrieval_validator])
    if code != 0:  # the trainer printed why
        raise DemoStopped("", code)
    checkpoints = list_checkpoints(cfg.OUT_DIR)
    last_iteration = checkpoints[-1][0] if checkpoints else 0
    total = cfg.OPTIM.MAX_ITER
    if total > 0 and last_iteration != total:  # preempted: the trainer checkpointed and returned
        raise DemoStopped(
            f"training stopped at iteration {last_iteration} of {total} after a checkpoint: "
            f"{CONTINUE}"
        )
    return checkpoints[-1][1]


# --------------------------------------------------------------------------------------- 3. extract
def extraction_config(cfg, weights, output_dir, local=True):
    extract_cfg = cfg.clone()
    extract_cfg.TEST.WEIGHTS = weights
    extract_cfg.EXTRACT.OUTPUT_DIR = output_dir
    extract_cfg.EXTRACT.LOCAL = local
    # a few hundred small images: starting workers costs more than it saves
    extract_cfg.DATA_LOADER.NUM_WORKERS = 0
    return extract_cfg


def extract(cfg):
    """Extract the EXTRACT.* dataset into cfg.EXTRACT.OUTPUT_DIR (replacing what an earlier demo
    left there)."""
    from tools.extraction.runner import run_extraction

    shutil.rmtree(cfg.EXTRACT.OUTPUT_DIR, ignore_errors=True)
    code, _ = run_extraction(cfg)
    if code != 0:
        raise RuntimeError(
            f"extraction into {cfg.EXTRACT.OUTPUT_DIR} failed for some images (exit code {code})"
        )
    return cfg.EXTRACT.OUTPUT_DIR


# -------------------------------------------------------------------------------------- 4. evaluate
def evaluation_config(cfg, features_dir, methods, out_dir):
    eval_cfg = cfg.clone()
    eval_cfg.EVAL.FEATURES_DIR = features_dir
    eval_cfg.EVAL.METHODS = list(methods)
    eval_cfg.ASMK.CACHE_DIR = os.path.join(out_dir, "asmk")
    eval_cfg.OUT_DIR = out_dir
    return eval_cfg


def evaluate_methods(cfg):
    """(evaluation context, {method: raw results}) of cfg.EVAL.METHODS on the stores in
    EVAL.FEATURES_DIR."""
    from tools.evaluation.run import build_context  # imports every method module
    from tools.retrieval.methods import raw_results

    # a codebook of an earlier demo's features must not be reused
    shutil.rmtree(cfg.ASMK.CACHE_DIR, ignore_errors=True)
    context = build_context(cfg)
    return context, raw_results(context, cfg.EVAL.METHODS)


def results_table(trained, untrained, context):
    """results.json's dict: the untrained global row first, then the trained methods in EVAL.METHODS
    order."""
    return {
        UNTRAINED: context.summarize(untrained["global"]),
        **{method: context.summarize(raw) for method, raw in trained.items()},
    }


def format_results(results, title=""):
    """One line per method: mAP, then each mP@k, for Easy / Medium / Hard (percent)."""
    metrics = list(results[next(iter(results))]["E"])
    width, column = max(len(method) for method in results) + 1, 7
    group = column * len(PROTOCOLS)
    lines = [title] if title else []
    lines.append((" " * (width + 2) + "".join(f"{metric:^{group}}" for metric in metrics)).rstrip())
    lines.append(
        f"{'method':<{width}}"
        + "".join(f"{protocol:>{column}}" for _ in metrics for protocol in PROTOCOLS)
    )
    for method, by_protocol in results.items():
        values = [by_protocol[protocol][metric] for metric in metrics for protocol in PROTOCOLS]
        lines.append(f"{method:<{width}}" + "".join(f"{value:>{column}.2f}" for value in values))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the demo
def run_demo(options, log=print):
    """Run every step; return a summary dict (results, paths, timings of this run and the stopped
    runs before it), also written to OUT/summary.json. A preemption signal or a stopped training
    raises DemoStopped (tools/demo_runs.py) after recording this run's seconds."""
    threads = options.threads or available_cores()
    # the loader's and the generator's worker processes run one thread each
    torch.set_num_threads(threads)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # it reports every CPU variant it tried
    timer = StepTimer(log)
    try:
        with stop_on_signals(lambda: timer.current):
            summary = run_steps(options, timer, threads, log)
    except DemoStopped:
        record_stopped_run(options.out_dir, timer.totals())
        raise
    forget_stopped_runs(options.out_dir)
    return summary


def after_training_estimate(out_dir, spec):
    """Seconds of the steps after the training, for the training's ETA: as the last finished run in
    out_dir measured them, else AFTER_TRAINING_S_PER_IMAGE per test image."""
    path = os.path.join(out_dir, "summary.json")
    steps = read_json(path).get("timing", {}).get("steps", {}) if os.path.isfile(path) else {}
    after = [step["wall_s"] for name, step in steps.items() if name not in BEFORE_TRAINING]
    if after:
        return sum(after)
    return AFTER_TRAINING_S_PER_IMAGE * (spec["queries"] + spec["database"])


def run_steps(options, timer, threads, log):
    out = options.out_dir
    data_dir = options.data_dir or default_data_dir(options.seed, options.data_size)
    # a config mistake stops the demo before anything is generated
    cfg = demo_config(options, data_dir)
    info = timer.run(
        "data", ensure_synthetic, data_dir, options.seed, options.data_size, threads, log=log
    )
    cfg.TRAIN.ETA_EXTRA_S = after_training_estimate(out, info["spec"])
    checkpoint = timer.run("train", train, cfg, log=log)
    cfg.TEST.WEIGHTS = checkpoint
    from tools.pipeline_reranker import recipe_of, reranker_step, with_rerankers

    rerankers = reranker_step(options, timer, cfg, checkpoint, log=log)
    trained_dir = timer.run(
        "extract, trained",
        extract,
        extraction_config(cfg, checkpoint, os.path.join(out, "features")),
    )
    untrained_dir = timer.run(
        "extract, untrained",
        extract,
        extraction_config(cfg, "", os.path.join(out, "features_untrained"), local=False),
    )
    trained_cfg = evaluation_config(cfg, trained_dir, cfg.EVAL.METHODS, out)
    trained_cfg = with_rerankers(trained_cfg, rerankers, recipe_of(options))
    summary = evaluate_and_draw(timer, cfg, trained_cfg, untrained_dir, out, log)
    summary.update(checkpoint=checkpoint, data_dir=data_dir, seed=options.seed, threads=threads)
    summary["timing"] = all_runs_timing(out, timer.totals())
    write_json(os.path.join(out, "summary.json"), summary)
    return summary


def evaluate_and_draw(timer, cfg, trained_cfg, untrained_dir, out, log):
    """Evaluate the trained and the untrained features, write results.json, draw the pictures;
    returns the summary's results, paths and title."""
    context, trained = timer.run("evaluate, trained", evaluate_methods, trained_cfg)
    _, untrained = timer.run(
        "evaluate, untrained",
        evaluate_methods,
        evaluation_config(cfg, untrained_dir, ["global"], out),
    )
    results = results_table(trained, untrained, context)
    results_path = os.path.join(out, "results.json")
    write_json(results_path, results)
    pictures = timer.run(
        "pictures", draw_pictures, trained_cfg, context, trained, cfg.OUT_DIR, out, log=log
    )
    return {
        "results": results,
        "results_path": results_path,
        "pictures": pictures,
        "iterations": cfg.OPTIM.MAX_ITER,
        "title": context.title,
    }


def report(summary):
    """The table and where everything is, as text."""
    timing = summary["timing"]
    lines = [
        format_results(summary["results"], summary["title"]),
        "",
        f"results:    {summary['results_path']}",
        f"checkpoint: {summary['checkpoint']}",
    ]
    lines += [f"picture:    {path}" for path in summary["pictures"].values()]
    runs = timing.get("runs", 1)
    lines.append(
        f"time:       {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU (this process and "
        f"its workers{f', {runs} runs' if runs > 1 else ''}), {summary['iterations']} iterations, "
        f"{summary['threads']} threads"
    )
    return "\n".join(lines)
