"""The weights file of a trained re-ranker: one torch file of plain types (loadable with
weights_only=True) holding the state dict, the RERANKER section it was built with, the descriptor
sizes, lambda and gamma of the final score and the provenance of the training store.

    save_reranker(path, model, section, local_dim, global_dim, info)
    model, info = load_reranker(path, device)   # model in eval mode
"""

from yacs.config import CfgNode

from core.config import ConfigError, load_cfg
from core.io import torch_save
from core.weights import WeightsError, read_checkpoint
from modeling.reranker import build_reranker

WEIGHTS_FORMAT = "delg-reranker-1"


def save_reranker(path, model, section, local_dim, global_dim, info):
    """Write atomically: section is the RERANKER config node (or its dict); info holds "lambda",
    "gamma", "provenance" (the training store's), "training_store" and "selection"."""
    state = {
        "format": WEIGHTS_FORMAT,
        "config": _plain(section),
        "local_dim": int(local_dim),
        "global_dim": int(global_dim),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        **info,
    }
    torch_save(state, path)
    return path


def load_reranker(path, device="cpu"):
    """The model (eval mode, on device) and the file's dict without the state dict."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(
            f"{path}: not a re-ranker weights file (format {WEIGHTS_FORMAT!r} expected; "
            "tools/train_reranker.py writes OUT_DIR/reranker.pth)"
        )
    config = load_cfg()
    try:
        config.RERANKER.merge_from_other_cfg(CfgNode(state["config"]))
    except (KeyError, ValueError) as error:
        raise ConfigError(f"{path}: its RERANKER section does not fit this code: {error}") from None
    model = build_reranker(config, state["local_dim"], state["global_dim"])
    model.load_state_dict(state["state_dict"])
    info = {key: value for key, value in state.items() if key != "state_dict"}
    return model.to(device).eval(), info


def _plain(node):
    """A config node as nested plain dicts and lists."""
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, tuple):
        return list(node)
    return node
