"""Draw the loss, top-1 error and learning-rate curves of a training run: ``python
tools/plot_training.py OUT_DIR``.

Reads OUT_DIR/training_log.jsonl (written by the trainer) and writes OUT_DIR/training_curves.png (or
--out). A run with TRAIN.RETRIEVAL_EVAL gets one more panel: the retrieval mAP (Easy / Medium /
Hard) on EVAL.DATASET.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import os  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.cli import run_reporting_errors  # noqa: E402
from core.io import atomic_path  # noqa: E402
from core.logging import JSON_LOG_NAME, read_json_log  # noqa: E402
from core.yaml_file import read_yaml  # noqa: E402

_LOSSES = (
    ("loss", "total"),
    ("loss_global", "global CE"),
    ("loss_attention", "attention CE"),
    ("loss_reconstruction", "reconstruction"),
)
_ERRORS = (
    ("global_top1_err", "global", "tab:blue"),
    ("attention_top1_err", "attention", "tab:green"),
)
_RETRIEVAL = (("mAP_E", "Easy"), ("mAP_M", "Medium"), ("mAP_H", "Hard"))


# The training top-1 error of the global head is taken on the logits the loss sees, which carry the
# angular margin against the true class, so it stays high long after the plain cosine logits (those
# of validation and retrieval) classify well.
MARGIN_NOTE = (
    "train global: on the margin logits the loss sees, so it stays high (near 100 % early);\n"
    "validation: plain cosine logits, as at retrieval"
)


def run_title(out_dir, last):
    """'DELG training: <model> on <dataset>, iteration i of n' and the folder, from the run's
    config.yaml when it is there."""
    what = "DELG training"
    config_path = os.path.join(out_dir, "config.yaml")
    if os.path.isfile(config_path):
        config = read_yaml(config_path) or {}
        model, train = config.get("MODEL", {}), config.get("TRAIN", {})
        what += (
            f": {model.get('TYPE', '?')}-{model.get('DEPTH', '?')} on {train.get('DATASET', '?')}"
        )
    progress = f"iteration {last.get('iter')} of {last.get('max_iter')}"
    return f"{what}, {progress}\n{os.path.abspath(out_dir)}"


def _series(records, key):
    points = [(r["iter"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(out_dir, png_path=None):
    """Write the curves of the run in out_dir to png_path (default OUT_DIR/training_curves.png);
    return the path."""
    log_path = os.path.join(out_dir, JSON_LOG_NAME)
    if not os.path.isfile(log_path):
        raise FileNotFoundError(
            f"{log_path} does not exist: is {out_dir} the OUT_DIR of a training run?"
        )
    records = read_json_log(log_path)
    train = [r for r in records if r.get("type") == "train_iter"]
    val = [r for r in records if r.get("type") == "val"]
    retrieval = [r for r in records if r.get("type") == "retrieval"]
    if not train:
        raise ValueError(
            f"{log_path} holds no training records yet (one is logged every LOG_PERIOD iterations)"
        )

    panels = 4 if retrieval else 3
    figure, axes_list = plt.subplots(panels, 1, figsize=(8, 3.3 * panels), sharex=True)
    _plot_losses(axes_list[0], train)
    _plot_errors(axes_list[1], train, val)
    if retrieval:
        _plot_retrieval(axes_list[2], retrieval)
    lr_axes = axes_list[-1]
    lr_axes.plot(*_series(train, "lr"))
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("iteration")
    for axes in axes_list:
        axes.grid(alpha=0.3)
    last = {"iter": max(r.get("iter", 0) for r in records), "max_iter": train[-1].get("max_iter")}
    figure.suptitle(run_title(out_dir, last))
    figure.tight_layout()

    png_path = png_path or os.path.join(out_dir, "training_curves.png")
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return png_path


def _plot_losses(axes, train):
    for key, label in _LOSSES:
        axes.plot(*_series(train, key), label=label)
    axes.set_yscale("log")
    axes.set_ylabel("loss (total; parts unweighted)")
    axes.legend(fontsize="small")


def _plot_errors(axes, train, val):
    for key, label, color in _ERRORS:
        note = " (batch, margin logits)" if key == "global_top1_err" else " (batch)"
        axes.plot(*_series(train, key), color=color, alpha=0.6, label=f"train {label}{note}")
        if val:
            axes.plot(*_series(val, key), "o--", color=color, label=f"validation {label}")
    axes.set_ylabel("top-1 error (%)")
    axes.set_title(MARGIN_NOTE, fontsize="small")
    axes.legend(fontsize="small")


def _plot_retrieval(axes, retrieval):
    for key, label in _RETRIEVAL:
        axes.plot(*_series(retrieval, key), "o-", label=label)
    axes.set_ylabel(f"retrieval mAP (%), {retrieval[-1].get('dataset', '')}")
    axes.legend(fontsize="small")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Plot loss, error and learning-rate curves of a training run."
    )
    parser.add_argument("out_dir", help="OUT_DIR of the run (holds training_log.jsonl)")
    parser.add_argument(
        "--out", default=None, help="PNG to write (default OUT_DIR/training_curves.png)"
    )
    args = parser.parse_args(argv)
    return run_reporting_errors("plot_training", _plot, args)


def _plot(args):
    print(plot_training(args.out_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
