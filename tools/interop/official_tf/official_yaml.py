"""The config of a converted official DELG model: architecture, input and official extraction.

official_values(settings) is the nested dict that tools/convert_official.py writes as
OUT_PREFIX.yaml and that configs/official/*.yaml hold; config_of merges it into the defaults.
"""

import yaml

INPUT_MEAN = 128.0 / 255.0  # (x - 128) / 128 on 0..255 pixels == (x / 255 - m) / m on 0..1


def official_values(settings):
    values = {
        "MODEL": _model_values(settings),
        "RESNET": {
            "TRANS_FUN": "bottleneck_transform",
            "NUM_GROUPS": 1,
            "WIDTH_PER_GROUP": settings["width"],
            "STRIDE_1X1": True,
            "STEM": settings["layout"],
        },
        "BN": {"EPS": 1e-5},
        "INPUT": {"CHANNEL_ORDER": "RGB", "MEAN": [INPUT_MEAN] * 3, "STD": [INPUT_MEAN] * 3},
        "EXTRACT": _extract_values(settings),
    }
    from core.config import _DEFAULTS

    if "MIN_SIZE" in _DEFAULTS.EXTRACT:  # official: images under 10 px give no features
        values["EXTRACT"]["MIN_SIZE"] = 10
    if "LOCATIONS" in _DEFAULTS.EXTRACT:  # official: stride * cell index / scale
        values["EXTRACT"]["LOCATIONS"] = "official"
    return values


def _model_values(settings):
    return {
        "TYPE": "resnet",
        "DEPTH": settings["depth"],
        "NUM_CLASSES": settings["num_classes"],
        "LOCAL_STRIDE": 32,
        "HEADS": {
            "IN_FEAT": 0,
            "REDUCTION_DIM": settings["reduction_dim"],
            "GEM_P": settings["gem_p"],
            "GEM_LEARNABLE": False,
            "MARGIN_TYPE": "arcface",
            "MARGIN": 0.1,
            "SCALE": 45.25,
        },
        "LOCAL": {
            "TYPE": "autoencoder",
            "ATTENTION_INPUT": settings["attention_input"],
            "ATTENTION_DIM": settings["attention_dim"],
            "DESCRIPTOR_DIM": settings["descriptor_dim"],
        },
    }


def _extract_values(settings):
    """The official extraction: its scales, resize, rounding, threshold and limits."""
    from tools.interop.official_tf.convert import GLOBAL_SCALES, LOCAL_SCALES

    return {
        "RESIZE": settings["resize"],
        "SIZE_ROUNDING": "half_even",
        "LOCAL_SCALES": list(LOCAL_SCALES),
        "GLOBAL_SCALES": list(GLOBAL_SCALES),
        "ATTENTION_THRESHOLD": settings["threshold"],
        "MAX_FEATURES": 1000,
        "MAX_IMAGE_SIZE": 1024,
        "NMS_IOU": 1.0,
    }


def config_of(settings):
    from core.config import _DEFAULTS, merge_dict

    cfg = _DEFAULTS.clone()  # the defaults, leaving the global cfg alone
    merge_dict(cfg, official_values(settings), "official config")
    return cfg


def official_yaml(settings, release, layout_line):
    header = (
        f"# Official DELG {release}: {layout_line}.\n"
        "# Written by tools/convert_official.py; use with TEST.WEIGHTS (extraction) or\n"
        "# TRAIN.WEIGHTS (fine-tuning) set to the .pth written beside it. "
        "See docs/official_weights.md.\n"
    )
    body = yaml.dump(official_values(settings), Dumper=_Dumper, sort_keys=False)
    return header + body


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line (as the hand-written presets are)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)
