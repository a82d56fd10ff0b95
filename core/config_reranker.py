"""The RERANKER section of the config tree: the learned local re-ranker (modeling/reranker.py), its
training from feature stores (tools/train_reranker.py) and its evaluation (docs/reranking.md).

Only ``build_reranker(cfg)`` reads the model keys; a trained model's weights file carries its own
copy of them, with lambda, gamma and the provenance of the store it was trained on.
"""

from yacs.config import CfgNode


def reranker_section():
    """The defaults: AMES-like (5 layers of width 128, 2 heads, FFN 1024; 600 query and 50 database
    locals)."""
    node = CfgNode()
    node.TYPE = "ames"  # modeling.registry.RERANKERS
    node.DIM = 128  # token width
    node.DEPTH = 5  # layers: self-attention in each image, cross-attention to the other, FFN
    node.HEADS = 2
    node.FFN_DIM = 1024
    node.DROPOUT = 0.0
    node.NUM_SCALES = 7  # scale embedding rows: index round(2 log2 s) + 4 (0.25 -> 0, 2.0 -> 6)
    node.GLOBAL_TOKEN = False  # add each image's global descriptor to its image token
    node.XY_ENCODING = False  # add an encoding of the (centred, scaled) keypoint locations
    # each local token also gets its SIMILARITY_K highest cosine similarities to the other image's
    # locals (a matching prior that trains in minutes; 0: none, as AMES)
    node.SIMILARITY_K = 2
    node.BINARY = False  # database locals as BITS-bit codes (erf in training, sign in evaluation)
    node.BITS = 128
    node.BINARY_SHARPNESS = 3.0  # training surrogate of sign: erf(sharpness * projection)
    node.BINARY_STRAIGHT_THROUGH = True  # train on sign's values, erf's gradient (False: on erf)
    node.N_QUERY = 600  # query locals kept, highest attention first
    node.N_DATABASE = 50  # database locals kept, highest attention first
    # evaluation (method `learned`)
    node.WEIGHTS = ""  # a trained re-ranker (OUT_DIR/reranker.pth of tools/train_reranker.py)
    node.SHORTLIST = 100  # re-rank this many top images per protocol (junk excluded, as SV)
    node.LAMBDA = -1.0  # final score weight of the global score; negative: the trained value
    node.GAMMA = -1.0  # logit scale of the final score; negative: the trained value
    node.BATCH_SIZE = 256  # pairs per forward
    node.DEVICE = "auto"  # auto, cpu or cuda
    node.BINARY_WEIGHTS = ""  # the binary model of learned_binary; "" = WEIGHTS (must be binary)
    node.CODES_DIR = ""  # compact database codes; "" = beside the store (<store>.compact)
    node.TRAIN = training_section()
    return node


def training_section():
    """RERANKER.TRAIN: mining from a training-split store (the loop keeps OPTIM.* / TRAIN.*)."""
    node = CfgNode()
    node.STORE = ""  # store of the training split (tools/extractor.py, EXTRACT.FORMAT gldv2)
    node.LABELS = ""  # the split's CSV (landmark_id,images), e.g. train_clean.csv
    node.TOP_K = 100  # neighbours by global descriptor (self excluded) to mine from
    node.MIN_POSITIVES = 5  # anchors need at least this many same-landmark images in the top-K
    node.N_DATABASE_MIN = 10  # database counts drawn uniformly from [N_DATABASE_MIN, N_DATABASE]
    node.VAL_FRACTION = 0.1  # landmarks held out to choose the checkpoint and lambda / gamma
    node.VAL_SHORTLIST = 100  # held-out queries re-rank this many of their global neighbours
    node.VAL_QUERIES = 500  # at most this many held-out queries (seeded choice)
    node.LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    node.GAMMAS = [0.25, 0.5, 1.0, 2.0]
    node.SEARCH_CHUNK = 65536  # database rows per block of the exact k-NN
    node.SEARCH_DEVICE = "auto"
    return node
