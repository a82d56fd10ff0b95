"""The one configuration tree of the framework (yacs).

Section and key names follow the seed project (pycls style) so that its YAML files merge unchanged;
the base defaults are the DELG paper's. Only builders and scripts read ``cfg``; every module takes
plain arguments.
"""

import ast
import difflib
import os

from yacs.config import CfgNode

from core.config_reranker import reranker_section
from core.config_rules import value_problems
from core.io import write_text
from core.nested import flatten
from core.yaml_file import YamlFileError, read_yaml

_C = CfgNode()
cfg = _C

# -------------------------------------------------------------------------------------------- model
_C.MODEL = CfgNode()
_C.MODEL.TYPE = "resnet"  # backbone family; see modeling.registry for the registered names
_C.MODEL.DEPTH = 50  # ResNet depth: 18, 34, 50, 101 or 152
_C.MODEL.NUM_CLASSES = 81313  # classes of the margin head (GLDv2-clean); the data sets it when 0
# local-feature stride: 16 (block3 as is) or 32 (1x1 max-pool, stride 2, after block3)
_C.MODEL.LOCAL_STRIDE = 32
_C.MODEL.FREEZE_BN = False  # keep BatchNorm statistics and affine parameters of the backbone fixed
_C.MODEL.FREEZE_STEM = False  # keep the stem (conv1, bn1) fixed
_C.MODEL.LOSS_FUN = "cross_entropy"  # seed key; DELG always uses cross-entropy on the margin logits

_C.MODEL.HEADS = CfgNode()
# block4 channels; 0 derives it from the backbone, a value is checked against it
_C.MODEL.HEADS.IN_FEAT = 0
_C.MODEL.HEADS.REDUCTION_DIM = 2048  # whitening FC output = global descriptor dimension (seed 512)
_C.MODEL.HEADS.GEM_P = 3.0  # GeM pooling power
_C.MODEL.HEADS.GEM_LEARNABLE = False  # learn the GeM power (seed) or keep it fixed (paper)
# arcface (official), curricular_arcface (seed) or cosine (plain softmax)
_C.MODEL.HEADS.MARGIN_TYPE = "arcface"
_C.MODEL.HEADS.MARGIN = 0.1  # angular margin m (seed 0.15)
_C.MODEL.HEADS.SCALE = 45.25  # logit scale s (paper sqrt(2048); seed 30)

_C.MODEL.LOCAL = CfgNode()
# autoencoder (paper: 1024 -> 128 -> 1024) or seed (512-d BN(conv1x1))
_C.MODEL.LOCAL.TYPE = "autoencoder"
_C.MODEL.LOCAL.ATTENTION_DIM = 512  # hidden channels of the attention network
# what the autoencoder head's attention network reads: decoder (ReLU of the decoder output; the
# attention classifier pools L2-normalised block3: official TF2 DELG) or block3 (attention on
# block3, the classifier pools the decoder output: TF1 DELF wiring). The seed head reads block3.
_C.MODEL.LOCAL.ATTENTION_INPUT = "decoder"
# local descriptor dimension (autoencoder bottleneck; 512 for seed)
_C.MODEL.LOCAL.DESCRIPTOR_DIM = 128

_C.MODEL.LOSSES = CfgNode()
_C.MODEL.LOSSES.GLOBAL_WEIGHT = 1.0  # weight of the global (margin) cross-entropy
_C.MODEL.LOSSES.ATTENTION_WEIGHT = 1.0  # beta: weight of the attention classifier cross-entropy
_C.MODEL.LOSSES.RECONSTRUCTION_WEIGHT = 10.0  # lambda: weight of the autoencoder reconstruction MSE

# ------------------------------------------------------------------------------------------- resnet
_C.RESNET = CfgNode()
# seed key: basic_transform (R18/34) or bottleneck_transform
_C.RESNET.TRANS_FUN = "bottleneck_transform"
_C.RESNET.NUM_GROUPS = 1  # groups of the 3x3 conv (1 = ResNet, >1 = ResNeXt)
_C.RESNET.WIDTH_PER_GROUP = 64  # base width; 32 gives a half-width network (fast CPU presets)
# stride on the 1x1 conv (official Keras R50, rf 291) or the 3x3 (torchvision, seed)
_C.RESNET.STRIDE_1X1 = True

# stem: torchvision (conv1 padding 3, max-pool padding 1; what torchvision's ImageNet weights were
# trained with), keras (official TF2: conv1 TF 'same' = 2 before / 3 after on an even side,
# max-pool 'valid') or slim (tf-slim resnet_v1 of the TF1 releases: conv1 padding 3, pool1 TF
# 'SAME' = 0 before / 1 after on an even side); TF 'SAME' is computed for every input size
_C.RESNET.STEM = "torchvision"

# --------------------------------------------------------------------------------------------- timm
# MODEL.TYPE timm: any timm model as the backbone (modeling/timm_backbone.py, timm installed); the
# RESNET keys and MODEL.LOCAL_STRIDE do not apply to it
_C.TIMM = CfgNode()
_C.TIMM.NAME = "resnet50"  # a timm model name (timm.list_models()); always built untrained
_C.TIMM.WEIGHTS = ""  # optional local timm or torchvision checkpoint of it (never a download)
# CNNs: the local map is the stage of this stride (the global map the last stage); ViTs: the patch
# size (the local map is the patch grid of TIMM.LOCAL_BLOCK)
_C.TIMM.LOCAL_STRIDE = 16
_C.TIMM.LOCAL_BLOCK = -1  # ViTs: the block whose patch grid is the local map (-1 the last)
# extra keyword arguments of timm.create_model as "key=value" (value a Python literal), e.g.
# ["depth=4", "embed_dim=192"]
_C.TIMM.KWARGS = []

# --------------------------------------------------------------------------------------- batch norm
_C.BN = CfgNode()
_C.BN.EPS = 1e-5  # BatchNorm epsilon
_C.BN.MOM = 0.1  # BatchNorm momentum
_C.BN.ZERO_INIT_FINAL_GAMMA = False  # zero-init the last BN gamma of each residual block
_C.BN.SYNC = False  # convert BatchNorm to SyncBatchNorm under DDP

# -------------------------------------------------------------------------------------------- input
_C.INPUT = CfgNode()
_C.INPUT.CHANNEL_ORDER = "RGB"  # RGB (torchvision weights) or BGR (seed weights, read with OpenCV)
_C.INPUT.MEAN = [0.485, 0.456, 0.406]  # per-channel mean on [0, 1] pixels, in CHANNEL_ORDER
_C.INPUT.STD = [0.229, 0.224, 0.225]  # per-channel std on [0, 1] pixels, in CHANNEL_ORDER

# ------------------------------------------------------------------------------------- optimisation
_C.OPTIM = CfgNode()
_C.OPTIM.OPTIMIZER = "sgd"  # sgd or adamw
_C.OPTIM.BASE_LR = 0.01  # learning rate for the whole batch (official 0.01)
_C.OPTIM.LR_POLICY = "lin"  # lin (linear to zero, official), cos (seed) or steps
# epochs at which the steps policy multiplies the LR by LR_MULT (first entry 0 as in pycls)
_C.OPTIM.STEPS = []
_C.OPTIM.LR_MULT = 0.1  # multiplier of the steps policy
_C.OPTIM.MAX_EPOCH = 100  # training length in epochs
# when > 0, training length in iterations (overrides MAX_EPOCH; fixed-budget runs); OPTIM.MAX_EPOCH
# on the command line resets it to 0, so the later source wins
_C.OPTIM.MAX_ITER = 0
_C.OPTIM.MOMENTUM = 0.9  # SGD momentum
_C.OPTIM.NESTEROV = False  # Nesterov momentum (seed True)
_C.OPTIM.DAMPENING = 0.0  # SGD dampening
_C.OPTIM.WEIGHT_DECAY = 1e-4  # L2 weight decay
_C.OPTIM.NO_BN_BIAS_DECAY = True  # no weight decay on BatchNorm and bias parameters
_C.OPTIM.WARMUP_EPOCHS = 0.0  # linear warm-up length in epochs (seed 5)
_C.OPTIM.WARMUP_FACTOR = 0.1  # LR multiplier at the start of the warm-up
_C.OPTIM.CLIP_GRAD_NORM = 10.0  # clip gradients to this global norm (official 10); 0 disables
_C.OPTIM.BETAS = [0.9, 0.999]  # AdamW betas

# ----------------------------------------------------------------------------------------- training
_C.TRAIN = CfgNode()
# dataset name; its folder is DATA_ROOT, or datasets/data/<DATASET> when empty
_C.TRAIN.DATASET = "gldv2"
_C.TRAIN.DATA_ROOT = ""  # dataset root folder (images and the SPLIT file)
# GLDv2 csv (train_clean.csv / train.csv) or a list file (path label)
_C.TRAIN.SPLIT = "train_clean.csv"
# gldv2, list or auto (by the SPLIT file's extension: .csv gldv2, else list)
_C.TRAIN.FORMAT = "auto"
# fraction of each class held out for validation (paper 20%); 0 uses all
_C.TRAIN.VAL_FRACTION = 0.2
_C.TRAIN.SPLIT_SEED = 0  # seed of the deterministic train/validation split
_C.TRAIN.BATCH_SIZE = 256  # total batch over all processes (official 256)
_C.TRAIN.IM_SIZE = 512  # square training crop size (paper 512)
_C.TRAIN.FLIP = False  # random horizontal flips (seed True, official False)
_C.TRAIN.EVAL_PERIOD = 1  # validate every this many epochs
_C.TRAIN.CHECKPOINT_PERIOD = 1  # write a checkpoint every this many epochs
_C.TRAIN.CHECKPOINT_ITERS = 0  # also write one every this many iterations (0: only per epoch)
_C.TRAIN.KEEP_CHECKPOINTS = 3  # how many of the newest checkpoints to keep
_C.TRAIN.AUTO_RESUME = False  # continue from the newest readable checkpoint in OUT_DIR
_C.TRAIN.WEIGHTS = ""  # initial weights: ImageNet ResNet .pth, seed checkpoint or one of ours
_C.TRAIN.AMP = "off"  # mixed precision on GPU: off, bf16 or fp16 (with a grad scaler)
_C.TRAIN.CHANNELS_LAST = False  # channels-last memory format on GPU
_C.TRAIN.MAX_BAD_IMAGE_FRACTION = 0.01  # stop when more than this fraction of images fail to decode
# intra-op threads of CPU training, 0: torch's (or the launcher's) choice. oneDNN sums convolution
# gradients in an order that depends on the thread count, so a fixed count makes a CPU run repeat
# bit for bit whatever the machine's cores and load (the demo sets 2)
_C.TRAIN.CPU_THREADS = 0
# stop after this many non-finite losses in a row (each is skipped)
_C.TRAIN.MAX_NONFINITE_STEPS = 5
_C.TRAIN.RETRIEVAL_EVAL = False  # evaluate retrieval mAP (EVAL.* dataset) every EVAL_PERIOD epochs
# also write the JSON log's scalars as TensorBoard curves in OUT_DIR (needs tensorboard)
_C.TRAIN.TENSORBOARD = False
# seconds of work after the training that the logged ETA adds (the demo: extraction and evaluation)
_C.TRAIN.ETA_EXTRA_S = 0.0

# --------------------------------------------------------------------------------------- validation
_C.TEST = CfgNode()
# seed key, kept so its configs merge; the format follows TEST.SPLIT's extension
_C.TEST.DATASET = "gldv2"
_C.TEST.DATA_ROOT = ""  # its root ("" = the training root)
_C.TEST.SPLIT = ""  # validation list file or GLDv2 csv ("" = the held-out fraction of TRAIN.SPLIT)
_C.TEST.BATCH_SIZE = 256  # total validation batch
_C.TEST.IM_SIZE = 512  # validation image size (centre crop after resizing the short side)
_C.TEST.WEIGHTS = ""  # checkpoint for testing and extraction

# -------------------------------------------------------------------------------------- data loader
_C.DATA_LOADER = CfgNode()
_C.DATA_LOADER.NUM_WORKERS = 4  # decoding worker processes per training process
_C.DATA_LOADER.PIN_MEMORY = True  # pin host memory for faster GPU copies

_C.CUDNN = CfgNode()
_C.CUDNN.BENCHMARK = True  # let cuDNN pick the fastest kernels (fixed input sizes)

# --------------------------------------------------------------------------------------- extraction
_C.EXTRACT = CfgNode()  # no batch size: images differ in size, so each image is one pyramid pass
# roxford5k, rparis6k, synth (revisitop layout), or a folder / list / csv name
_C.EXTRACT.DATASET = "roxford5k"
_C.EXTRACT.DATA_ROOT = ""  # dataset folder (revisitop: holds gnd_<name>.pkl and jpg/)
_C.EXTRACT.FORMAT = "revisitop"  # revisitop, folder, list or gldv2
_C.EXTRACT.SPLIT = ""  # list or csv file for the list / gldv2 formats
_C.EXTRACT.OUTPUT_DIR = ""  # where the feature stores go ("" = OUT_DIR/features)
_C.EXTRACT.GLOBAL = True  # extract global descriptors
_C.EXTRACT.LOCAL = True  # extract local features (False for distractor sets such as revisitop1m)
_C.EXTRACT.GLOBAL_SCALES = [0.7071, 1.0, 1.4142]  # pyramid scales of the global descriptor
# pyramid scales of local features
_C.EXTRACT.LOCAL_SCALES = [0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0]  # fmt: skip
# pyramid resizing: antialias (ours: bilinear with antialiasing), bilinear (no antialiasing,
# half-pixel centres: TF2 tf.image.resize) or bilinear_legacy (TF1 resize_bilinear without
# half-pixel centres); the official releases use one of the last two
_C.EXTRACT.RESIZE = "antialias"
# rounding of resized sides: half_up (ours) or half_even (official: Python round for the
# MAX_IMAGE_SIZE step, tf.round of float32(side) * float32(s) for a pyramid level)
_C.EXTRACT.SIZE_ROUNDING = "half_up"
_C.EXTRACT.MAX_IMAGE_SIZE = 1024  # longest image side before the pyramid (never upscales)
# an image with a side under this (after MAX_IMAGE_SIZE) gives no features, and nothing is upscaled
# (official 10); 0: images with a side under 32 px are upscaled to 32 instead (ours)
_C.EXTRACT.MIN_SIZE = 0
# stored (x, y): pixel_centres (ours: a cell's receptive-field centre mapped through each resize by
# pixel centres) or official (stride * cell index / scale / MAX_IMAGE_SIZE resize factor)
_C.EXTRACT.LOCATIONS = "pixel_centres"
# the local feature selection rule (tools/extraction/selection_rules.py): official (attention
# threshold, top MAX_FEATURES across scales, optional NMS); a rule reads the keys it declares
_C.EXTRACT.SELECTION = "official"
_C.EXTRACT.ATTENTION_THRESHOLD = 454.6  # keep local features scoring above this (R50 GLDv2-clean)
_C.EXTRACT.MAX_FEATURES = 1000  # top-K local features by attention across all scales
_C.EXTRACT.NMS_IOU = 1.0  # IoU of receptive-field boxes for NMS; 1.0 disables (official)
_C.EXTRACT.FLOAT16 = True  # store local descriptors as float16
_C.EXTRACT.CROP_QUERIES = True  # crop revisitop queries to their bbx (the benchmark's protocol)
_C.EXTRACT.DISTRACTORS = ""  # revisitop1m image list to add to the database ("" = none)
_C.EXTRACT.DISTRACTOR_ROOT = ""  # folder holding the distractor images
_C.EXTRACT.SHARD_SIZE = 1000  # images per shard (the unit of resuming)

# ----------------------------------------------------------------------------- spatial verification
_C.SV = CfgNode()
# degensac (homography, pydegensac), affine (official RANSAC) or magsac (OpenCV USAC)
_C.SV.METHOD = "degensac"
_C.SV.SHORTLIST = 100  # re-rank this many top images per protocol (junk excluded)
_C.SV.MATCH_THRESHOLD = 1.0  # nearest-neighbour descriptor distance bound (official 1.0, seed 0.99)
_C.SV.RATIO_TEST = 0.0  # Lowe ratio test threshold; 0 disables
_C.SV.MUTUAL = False  # keep only mutual nearest neighbours
_C.SV.INLIER_THRESHOLD = 20.0  # RANSAC residual in pixels (scale it with the image size)
_C.SV.CONFIDENCE = 1.0  # RANSAC confidence
_C.SV.MAX_ITERS = 1000  # RANSAC iterations
_C.SV.NUM_WORKERS = 0  # worker processes for geometry fitting (0 = in process)
_C.SV.SEED = 0  # RANSAC seed, so that results repeat
# the matcher's candidate product: auto (bfloat16 where the device does it natively, else float32;
# core/hardware.py), float32 or bfloat16; the matches are the same, only the speed differs
_C.SV.MATCH_PRECISION = "auto"

# --------------------------------------------------------------------------------------------- ASMK
_C.ASMK = CfgNode()
_C.ASMK.CODEBOOK_SIZE = 65536  # visual words (65536 for real data)
_C.ASMK.TRAIN_FEATURES = 1000000  # at most this many database descriptors train the codebook
_C.ASMK.BINARY = True  # binarised residuals
_C.ASMK.MULTIPLE_ASSIGNMENT_DB = 1  # words per database descriptor
_C.ASMK.MULTIPLE_ASSIGNMENT_QUERY = 5  # words per query descriptor
_C.ASMK.ALPHA = 3.0  # selectivity power
_C.ASMK.SIMILARITY_THRESHOLD = 0.0  # selectivity threshold
_C.ASMK.SEED = 0  # codebook k-means seed
_C.ASMK.CACHE_DIR = ""  # where the codebook and inverted file are kept ("" = OUT_DIR/asmk)

# --------------------------------------------------------------------------------------- evaluation
_C.EVAL = CfgNode()
_C.EVAL.DATASET = "roxford5k"  # roxford5k, rparis6k, synth, (+1m variants: roxford5k+1m), gldv2
_C.EVAL.DATA_ROOT = ""  # folder of the ground truth
_C.EVAL.FEATURES_DIR = ""  # feature stores ("" = EXTRACT.OUTPUT_DIR or OUT_DIR/features)
# global, sv, asmk, asmk_rerank, qe, dba, dba_qe, superglobal, <qe|dba|dba_qe>+<sv|asmk_rerank>
_C.EVAL.METHODS = ["global", "sv"]
_C.EVAL.KAPPAS = [1, 5, 10]  # k of mP@k
# global search keeps this many per query (all when the database is smaller)
_C.EVAL.SEARCH_TOPK = 1000
_C.EVAL.CHUNK_SIZE = 65536  # database rows scored at a time
# faiss for the global search of search.py and gldv2 (revisitop scores all chunks anyway)
_C.EVAL.USE_FAISS = False
_C.EVAL.DEVICE = "auto"  # auto, cpu or cuda
_C.EVAL.SOLUTION_FILE = ""  # GLDv2 retrieval_solution_v2.1.csv

# ------------------------------------------------------------------ re-ranking with global features
# alpha-QE, alpha-DBA and SuperGlobal (tools/rerank, docs/reranking.md): EVAL.METHODS qe, dba,
# dba_qe, superglobal, and qe / dba / dba_qe followed by +sv or +asmk_rerank (e.g. dba_qe+sv)
_C.RERANK = CfgNode()
_C.RERANK.QE_K = 2  # alpha-QE: database neighbours added to the query (not counting the query)
_C.RERANK.QE_ALPHA = 3.0  # alpha-QE: weight power of the neighbours' similarities
_C.RERANK.DBA_K = 10  # alpha-DBA: neighbours of a database image, the image itself counted
_C.RERANK.DBA_ALPHA = 3.0  # alpha-DBA: weight power of the neighbours' similarities
# negative similarities in alpha-QE / alpha-DBA: clamp (to 0 before the power) or sign (kept)
_C.RERANK.NEGATIVE = "clamp"
_C.RERANK.DBA_CHUNK = 4096  # alpha-DBA: database rows per k-NN block (memory and resume unit)
# where the augmented database is cached ("" = beside the database store: <store>.dba/)
_C.RERANK.DBA_CACHE_DIR = ""
_C.RERANK.SG_SHORTLIST = 400  # SuperGlobal: M, the shortlist refined and re-ranked
_C.RERANK.SG_K = 9  # SuperGlobal: K, neighbours inside the shortlist besides the image itself
_C.RERANK.SG_BETA = 0.15  # SuperGlobal: weight factor of the neighbours
# SuperGlobal shortlist: protocol (first M non-junk images per protocol, like sv) or shared (the
# first M of the global ranking for Easy, Medium and Hard, junk kept: the public code)
_C.RERANK.SG_CONVENTION = "protocol"

# the learned local re-ranker, its training and evaluation: core/config_reranker.py
_C.RERANKER = reranker_section()

# --------------------------------------------------------------------------------------------- misc
_C.NUM_GPUS = 1  # processes per machine (GPUs; CPU processes where there is no GPU)
_C.OUT_DIR = "./output"  # output directory of the run
_C.RNG_SEED = 1  # random seed
_C.LOG_PERIOD = 10  # iterations between log lines
_C.LOG_DEST = "stdout"  # stdout or file (OUT_DIR/stdout.log besides stdout)
_C.DIST_BACKEND = "auto"  # auto (nccl on GPU, gloo on CPU), nccl or gloo
_C.HOST = "localhost"  # rendezvous host of the spawned single-machine run
_C.PORT = 10001  # rendezvous port of the spawned single-machine run
_C.DEVICE = "auto"  # auto (cuda when available), cuda or cpu

_DEFAULTS = _C.clone()


class ConfigError(ValueError):
    """A user mistake in a config file or an override; the message says what and where."""


def _all_keys():
    return list(flatten(_DEFAULTS, keep_empty=False))


def _lookup(full_key):
    node = _DEFAULTS
    for part in full_key.split("."):
        if not isinstance(node, dict) or part not in node:
            close = difflib.get_close_matches(full_key, _all_keys(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {full_key!r}{hint}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"config key {full_key!r} is a section, not a value")
    return node


def _coerce(full_key, value, default):
    """Return value converted to the type of default, or raise ConfigError naming the key."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    else:
        return value
    expected = "list" if isinstance(default, (list, tuple)) else type(default).__name__
    raise ConfigError(
        f"config key {full_key} expects {expected}, got {value!r} ({type(value).__name__})"
    )


def _set(node, full_key, value):
    parts = full_key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def merge_dict(config, values, source):
    """Merge a nested dict into config, checking every key and type; source names the origin in
    errors."""
    for full_key, value in flatten(values, keep_empty=False).items():
        try:
            _set(config, full_key, _coerce(full_key, value, _lookup(full_key)))
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


def merge_file(config, path):
    """Merge a YAML file into config (a key given twice in the file is an error naming its line)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        values = read_yaml(path) or {}
    except YamlFileError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    merge_dict(config, values, path)


def merge_list(config, pairs):
    """Merge ``KEY VALUE`` command-line pairs into config.

    The later source wins for the training length too: OPTIM.MAX_EPOCH given here (without
    OPTIM.MAX_ITER) resets a MAX_ITER the file set, which would otherwise override the epochs.
    """
    if len(pairs) % 2:
        raise ConfigError(f"overrides come as KEY VALUE pairs; {pairs[-1]!r} has no value")
    if "OPTIM.MAX_EPOCH" in pairs[0::2] and "OPTIM.MAX_ITER" not in pairs[0::2]:
        config.OPTIM.MAX_ITER = 0
    for key, value in zip(pairs[0::2], pairs[1::2]):
        try:
            _set(config, key, _coerce(key, value, _lookup(key)))
        except ConfigError as error:
            raise ConfigError(f"command line: {error}") from None


def reset_cfg():
    """Restore the defaults in place (tests and repeated runs in one process)."""
    cfg.clear()
    cfg.update(_DEFAULTS.clone())


def dump_cfg(config, out_dir, name="config.yaml"):
    """Write the resolved config to out_dir atomically; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    write_text(path, config.dump())
    return path


def load_cfg(cfg_file="", opts=()):
    """A fresh config tree: the defaults with a file and overrides merged in (the global cfg is
    left alone)."""
    config = _DEFAULTS.clone()
    if cfg_file:
        merge_file(config, cfg_file)
    merge_list(config, list(opts))
    problems = value_problems(config)  # core/config_rules.py: e.g. no negative shortlist
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def load_global_cfg(cfg_file="", opts=()):
    """load_cfg into the global cfg, for process entry points (the trainer's processes, which read
    it in the training loop); returns it."""
    config = load_cfg(cfg_file, opts)
    cfg.clear()
    cfg.update(config)
    return cfg
