"""Convert an official DELG TensorFlow export into our checkpoint and the config that reproduces it.

convert_archive reads the variables (and the graph, when there is one), maps every variable
(weights_tf.py, weights_slim.py), derives the architecture from the shapes, checks every tensor
against the model that config builds, and returns the state dict, the config values and the
report lines (which variable went where, which were not used). Nothing is written here.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from tools.interop.official_tf.savedmodel import (
    ConversionError,
    attention_input,
    checkpoint_prefix,
    read_graph,
    read_variables,
    resize_variant,
)
from tools.interop.official_tf.weights_slim import convert_slim, slim_root
from tools.interop.official_tf.weights_tf import Conversion, convert_keras, keras_index

TARGET_BN_EPS = 1e-5  # BN.EPS of the written config; Keras' 1e-3 folds into the variances

# release name -> (depth, training set, attention score threshold of the official extraction)
RELEASES = {
    "r50delg_gld_20200814": (50, "GLDv1", 175.0),
    "r101delg_gld_20200814": (101, "GLDv1", 166.1),
    "r50delg_gldv2clean_20200914": (50, "GLDv2-clean", 454.6),
    "r101delg_gldv2clean_20200914": (101, "GLDv2-clean", 357.48),
}
LAYOUTS = {
    "keras": "a TF2/Keras export of the research/delf training code",
    "slim": "a TF1/tf-slim export (the layout of the released archives)",
}
LOCAL_SCALES = [0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0]
GLOBAL_SCALES = [0.70710677, 1.0, 1.4142135]
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
_DEFAULT_WIRING = {"keras": "decoder", "slim": "block3"}  # TF2 code; TF1 DELF code
_DEFAULT_RESIZE = {"keras": "bilinear", "slim": "bilinear_legacy"}


@dataclass
class Converted:
    state: dict
    layout: str
    release: str
    settings: dict
    lines: list = field(default_factory=list)


def detect_layout(variables, source):
    if slim_root(variables):
        return "slim"
    if keras_index(variables):
        return "keras"
    first = ", ".join(sorted(variables)[:3]) or "no variables"
    raise ConversionError(
        f"{source}: not a DELG model: neither tf-slim resnet_v1 nor Keras DELG variables "
        f"(first: {first})"
    )


def find_release(path, name=None):
    """(release name, depth, threshold, line): --release, else a known name in the path."""
    if name is None:
        parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
        name = next((part for part in reversed(parts) if part in RELEASES), None)
        if name is None:
            return None, None, None, "release unknown from the path: official default settings"
    if name not in RELEASES:
        known = ", ".join(RELEASES)
        raise ConversionError(f"--release {name!r} is not a released model; known: {known}")
    depth, data, threshold = RELEASES[name]
    return name, depth, threshold, f"release {name}: R{depth} trained on {data}"


def convert_archive(path, release=None):
    prefix, graph_path = checkpoint_prefix(path)
    variables = read_variables(prefix)
    layout = detect_layout(variables, path)
    conversion = Conversion(variables, layout)
    (convert_slim if layout == "slim" else convert_keras)(conversion, TARGET_BN_EPS)
    if "pool.p" not in conversion.state:
        conversion.put("pool.p", np.full(1, 3.0, np.float32), [], "absent: 3 (DELG, fixed)")
    name, depth, threshold, release_line = find_release(path, release)
    settings = architecture(conversion)
    if depth is not None and depth != settings["depth"]:
        raise ConversionError(
            f"{name} is an R{depth} release but {path} holds an R{settings['depth']}"
        )
    lines = [f"{path}: {LAYOUTS[layout]}, ResNet-{settings['depth']}", release_line]
    settings.update(_graph_facts(conversion, graph_path, lines))
    settings["threshold"] = threshold if threshold is not None else _default_threshold(settings)
    if threshold is None:
        lines.append(
            f"  attention threshold {settings['threshold']} (the GLDv2-clean release of this depth)"
        )
    check_against_model(conversion, settings)
    lines += table(conversion)
    return Converted(conversion.state, layout, name or "unknown", settings, lines)


def _default_threshold(settings):
    depth = 101 if settings["depth"] == 101 else 50
    return RELEASES[f"r{depth}delg_gldv2clean_20200914"][2]


def architecture(conversion):
    """Config values read from the converted shapes."""
    blocks = conversion.facts["blocks"]
    if blocks not in _DEPTHS:
        raise ConversionError(f"ResNet blocks per stage {blocks}: neither ResNet-50 nor ResNet-101")
    state = conversion.state
    margin = state.get("margin.weight", state.get("attention_classifier.weight"))
    return {
        "layout": conversion.layout,
        "depth": _DEPTHS[blocks],
        "width": state["backbone.conv1.weight"].shape[0],
        "reduction_dim": state["whiten.weight"].shape[0],
        "gem_p": round(float(state["pool.p"][0]), 6),
        "attention_dim": state["local_head.attention.conv1.weight"].shape[0],
        "descriptor_dim": state["local_head.autoencoder.encoder.weight"].shape[0],
        "num_classes": 0 if margin is None else margin.shape[0],
    }


def _graph_facts(conversion, graph_path, lines):
    layout = conversion.layout
    wiring, resize = _DEFAULT_WIRING[layout], _DEFAULT_RESIZE[layout]
    if graph_path is None:
        lines.append(
            f"  no graph (a checkpoint): attention input {wiring}, resize {resize} "
            f"(the {'TF2' if layout == 'keras' else 'TF1'} code's)"
        )
        return {"attention_input": wiring, "resize": resize}
    graph = read_graph(graph_path)
    found = attention_input(
        graph, conversion.facts["attention_kernel"], conversion.facts["decoder_kernel"]
    )
    if found is None:
        lines.append(
            f"  attention input not found in the graph: {wiring} (the "
            f"{'TF2' if layout == 'keras' else 'TF1'} code's)"
        )
    else:
        wiring = found
        lines.append(f"  attention input read from the graph: {wiring}")
    variant, description = resize_variant(graph)
    if variant is None:
        lines.append(f"  resize: {description}; {resize}")
    else:
        resize = variant
        lines.append(f"  resize read from the graph: {description} -> {resize}")
    return {"attention_input": wiring, "resize": resize}


def check_against_model(conversion, settings):
    """Every converted tensor has a place of its shape in the model the config builds, and every
    model tensor but the counters and the classifiers of an inference archive is converted."""
    from modeling import build_inference_model
    from tools.interop.official_tf.official_yaml import config_of

    cfg = config_of(settings)
    model = build_inference_model(cfg)
    target = model.state_dict()
    sources = {key: source for key, source, _ in conversion.rows}
    for key, value in conversion.state.items():
        if key not in target:
            raise ConversionError(f"{sources[key]} -> {key}: no such tensor in the model")
        if tuple(value.shape) != tuple(target[key].shape) and not (
            key in model.classifier_keys and settings["num_classes"] == 0
        ):
            raise ConversionError(
                f"{sources[key] or key}: shape {list(value.shape)} does not fit "
                f"{key} {list(target[key].shape)}"
            )
    optional = set(model.classifier_keys)
    missing = [
        key
        for key in target
        if key not in conversion.state
        and key not in optional
        and not key.endswith("num_batches_tracked")
    ]
    if missing:
        raise ConversionError(f"no variable of the archive gives {', '.join(missing[:8])}")


def table(conversion):
    lines = ["  converted (ours <- archive, how):"]
    lines += [f"    {key} <- {source or '-'} ({how})" for key, source, how in conversion.rows]
    unused = conversion.unused()
    lines.append(f"  unused ({len(unused)}):" if unused else "  unused: none")
    lines += [f"    {name} {shape}" for name, shape in unused.items()]
    return lines
