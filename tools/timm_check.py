"""Check which timm models work as DELG's backbone (MODEL.TYPE timm), one line each.

    python tools/timm_check.py NAME [NAME ...] [--cfg FILE] [KEY VALUE ...]

A NAME may hold wildcards (``'convnext*'``: every timm model the pattern matches). Each model is
built untrained (no download) and put through what training and extraction ask of a backbone: one
training step of two 224 x 224 images, after which every parameter must have a gradient (DDP
refuses the others), and the extraction of two awkward image sizes whose local maps must have the
sizes the backbone announces. The line gives the adapter (modeling/timm_backbone.py), the crop
multiple, the local and global maps (channels / stride), the receptive field and the parameter
count, or the one-line reason a model is refused. KEY VALUE overrides apply to every model
(``TIMM.KWARGS``, ``TIMM.LOCAL_STRIDE``, ...); MODEL.NUM_CLASSES is 10 unless one sets it. Exit
code 0 when every model works, 1 otherwise; the last line is ``works: <n>/<models>``.
"""

import argparse
import fnmatch
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from core.config import ConfigError, load_cfg  # noqa: E402
from modeling import build_loss, build_model  # noqa: E402
from modeling.timm_models import INPUT_ERRORS, first_line  # noqa: E402

SIZES = ((181, 243), (243, 181))
KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


def split_arguments(argv):
    """(model names, --cfg file, KEY VALUE overrides): the overrides begin at the first KEY."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", dest="cfg_file", default="", help="YAML config file")
    parser.add_argument("items", nargs="*", help="timm model names, then KEY VALUE overrides")
    args = parser.parse_intermixed_args(argv)
    first_key = next((i for i, item in enumerate(args.items) if KEY.match(item)), len(args.items))
    return args.items[:first_key], args.cfg_file, args.items[first_key:]


def expand(names):
    """The names, each pattern with wildcards replaced by the timm models it matches."""
    import timm

    models = []
    for name in names:
        matches = timm.list_models(name) if any(c in name for c in "*?[") else [name]
        if not matches:
            raise ConfigError(f"{name!r} matches no timm model (see timm.list_models())")
        models += [model for model in matches if fnmatch.fnmatch(model, name)]
    return models


def check(cfg, name):
    """(True, description) of a working model, else (False, the reason)."""
    cfg = cfg.clone()
    cfg.TIMM.NAME = name
    try:
        model = build_model(cfg)
    except ConfigError as error:
        return False, f"refused: {error}"
    try:
        missing = _without_gradient(cfg, model)
        if missing:
            return False, f"fails: parameters without a gradient: {', '.join(missing[:3])}"
        _check_extraction(model)
    except INPUT_ERRORS as error:
        return False, f"fails: {first_line(error, limit=160)}"
    return True, _describe(model)


def _without_gradient(cfg, model):
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 224, 224, generator=generator), torch.tensor([0, 1])
    loss, _ = build_loss(cfg)(model.train()(images, labels), labels)
    loss.backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def _check_extraction(model):
    with torch.no_grad():
        for size in SIZES:
            local = model.eval().extract(torch.zeros(1, 3, *size))["local"]
            expected = model.backbone.local_map_size(size)
            if tuple(local.shape[2:]) != expected:
                raise AssertionError(f"{size}: local map {tuple(local.shape[2:])}, not {expected}")


def _describe(model):
    backbone, geometry = model.backbone, model.local_geometry
    shapes = backbone.output_shape()
    maps = " ".join(f"{k} {v.channels}ch/{v.stride}" for k, v in shapes.items())
    crop = getattr(backbone, "multiple", getattr(backbone, "patch", 1))
    parameters = sum(p.numel() for p in backbone.parameters()) / 1e6
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad) / 1e6
    return (
        f"ok: {type(backbone).__name__}, crop to x{crop}, {maps}, "
        f"field {geometry.receptive_field} px, {parameters:.1f}M backbone parameters"
        + (f" ({frozen:.1f}M frozen: the global map does not reach them)" if frozen else "")
    )


def run(argv):
    names, cfg_file, opts = split_arguments(argv)
    if not names:
        raise ConfigError("name at least one timm model, e.g. resnet50 'convnext*'")
    cfg = load_cfg(cfg_file, ["MODEL.TYPE", "timm", "MODEL.NUM_CLASSES", "10", *opts])
    models = expand(names)
    works = 0
    for name in tqdm(models, desc="timm models", unit="model", leave=False):
        ok, text = check(cfg, name)
        works += ok
        tqdm.write(f"{name:44s} {text}")
    print(f"works: {works}/{len(models)}")
    return 0 if works == len(models) else 1


def main(argv=None):
    from core.cli import run_reporting_errors

    return run_reporting_errors("timm_check", run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
