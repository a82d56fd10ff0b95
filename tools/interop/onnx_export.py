"""ONNX export of the extraction network: one pyramid level's forward, for any ONNX runtime.

    export_onnx(model, "model.onnx")  # image [1, 3, H, W], H and W dynamic -> 3 outputs
    onnx_model = OnnxExtractionModel("model.onnx", structure=model)  # has model.extract's signature
    extract_image(onnx_model, image, image_size, geometry, settings)  # our pyramid around it

The graph takes a normalised image tensor (float32, [1, 3, H, W], any H and W) and returns the
three outputs of ``DELG.extract``: ``global`` [1, D] (after the whitening FC, before L2
normalisation), ``attention`` [1, 1, h, w] and ``local`` [1, d, h, w] (not normalised). The image
pyramid, the global aggregation, the local selection and the geometry stay ours (NumPy / PyTorch,
tools/extraction), so the same code runs around the PyTorch model or an ONNX session. The local
geometry (receptive field, stride, padding) is written into the model's metadata.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it needs no package beyond
onnx, where the dynamo exporter needs onnxscript.
"""

import json
import warnings

import numpy as np
import torch
import torch.nn as nn

from core.io import atomic_path

INPUT_NAME = "image"
OUTPUT_NAMES = ("global", "attention", "local")
GEOMETRY_KEY = "delg.local_geometry"
OPSET = 17


class ExtractionGraph(nn.Module):
    """DELG.extract with both branches, as a module with tensor outputs (what ONNX records)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model.extract(image, want_global=True, want_local=True)
        return out["global"], out["attention"], out["local"]


def export_onnx(model, path, sample_size=(256, 256), opset=OPSET):
    """Write one pyramid level of model (a DELG in eval mode) as an ONNX graph with dynamic height
    and width; return path. The graph is written under a temporary name and renamed (core/io.py):
    a failed write leaves what was at path."""
    with atomic_path(str(path)) as tmp:
        _export_to(model, tmp, sample_size, opset)
    return path


def _export_to(model, path, sample_size, opset):
    import onnx  # an optional dependency (requirements-interop.txt)

    graph = ExtractionGraph(model).eval()
    sample = torch.zeros(1, 3, *sample_size)
    spatial = {2: "height", 3: "width"}
    maps = {2: "map_height", 3: "map_width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        torch.onnx.export(
            graph,
            (sample,),
            path,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: spatial, "attention": maps, "local": maps},
            opset_version=opset,
            dynamo=False,
        )
    exported = onnx.load(path)
    entry = exported.metadata_props.add()
    entry.key, entry.value = GEOMETRY_KEY, json.dumps([int(v) for v in model.local_geometry])
    onnx.save(exported, path)


def open_session(path, providers=None):
    """An onnxruntime InferenceSession of an exported model (CPU unless providers say otherwise)."""
    import onnxruntime  # an optional dependency (requirements-interop.txt)

    return onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])


class OnnxExtractionModel:
    """An exported graph behind ``DELG.extract``'s signature, so tools/extraction runs it.

    structure: the DELG model the graph was exported from (its weights play no part): the pyramid
    asks its backbone which input sizes give a non-empty local map.
    """

    def __init__(self, path, structure, providers=None):
        self.session = open_session(path, providers)
        recorded = self.session.get_modelmeta().custom_metadata_map.get(GEOMETRY_KEY)
        if recorded is None:
            raise ValueError(f"{path}: no {GEOMETRY_KEY} metadata (not written by export_onnx)")
        self.local_geometry = type(structure.local_geometry)(*json.loads(recorded))
        if tuple(self.local_geometry) != tuple(structure.local_geometry):
            raise ValueError(
                f"{path}: local geometry {list(self.local_geometry)} differs from the config's "
                f"{list(structure.local_geometry)} (exported from another model)"
            )
        self.backbone = structure.backbone
        # the sizes of the empty features of an image too small for the network (official mode)
        self.global_dim = structure.global_dim
        self.local_descriptor_dim = structure.local_descriptor_dim

    def eval(self):
        return self

    def to(self, device):
        return self

    def extract(self, images, want_global=True, want_local=True):
        outputs = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAME: images.detach().float().cpu().numpy()}
        )
        wanted = {"global": want_global, "attention": want_local, "local": want_local}
        return {
            name: torch.from_numpy(value).to(images.device)
            for name, value in zip(OUTPUT_NAMES, outputs)
            if wanted[name]
        }


def parity(model, session, sizes, seed=0):
    """PyTorch against an ONNX session on random images of the given (height, width) sizes:
    {(height, width): {output: (max abs difference, max abs value of the PyTorch output)}}."""
    generator = torch.Generator().manual_seed(seed)
    graph = ExtractionGraph(model).eval()
    report = {}
    for height, width in sizes:
        image = torch.randn(1, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = graph(image)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
        report[(height, width)] = {
            name: (
                float(np.max(np.abs(value - reference.numpy()))),
                float(reference.abs().max()),
            )
            for name, value, reference in zip(OUTPUT_NAMES, got, expected)
        }
    return report


def scaled_difference(difference, magnitude):
    """A max abs difference on the scale of its output: absolute where the output's values stay
    within 1, relative to the largest value beyond (fp32 keeps about 7 digits, so a local map
    reaching 100 differs by ~1e-4 between two runtimes summing in another order)."""
    return difference / max(1.0, magnitude)


def worst_difference(report):
    """The largest scaled_difference over every size and output of a parity report."""
    return max(
        scaled_difference(difference, magnitude)
        for differences in report.values()
        for difference, magnitude in differences.values()
    )
