"""Extraction overhead: full DELG extraction of one image vs the bare backbone forward it cannot
avoid.

    python tools/benchmark_extract.py [--cfg FILE] [--image PATH] [--runs 3] [KEY VALUE ...]

(a) full extraction (tools.extraction.pyramid.extract_image): pyramid resizes, one pass per scale,
    local heads at the local scales, global head at the global scales, selection of the top
    features, copy to host memory;
(b) the bare backbone on the same image and weights: block3 at every local scale plus block4 at the
    global scales, on inputs resized beforehand.
Defaults: ResNet-50 at stride 16, a 1024 x 768 image, 7 local + 3 global scales, top 1000 with
threshold 0 (so the selection always has 1000 to pick). They override --cfg; KEY VALUE pairs
override both. Prints seconds per image (median of --runs after one warm-up each; on CPU also the
process's CPU time, which a busy shared machine distorts less than wall time), the parts of the
added work timed one by one (pyramid resizes, heads, selection), the store's bytes per image, and
last ``ratio: <a / b>`` of the wall-clock medians.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.cli import load_cfg_or_exit  # noqa: E402
from core.hardware import describe_machine  # noqa: E402
from datasets.features import open_store, write_store  # noqa: E402
from datasets.image_io import read_image  # noqa: E402
from datasets.transforms import build_normalizer, to_chw_tensor  # noqa: E402
from modeling.delg import describe_backbone  # noqa: E402
from tools.extraction.pyramid import extract_image, pyramid_size, resize_image, select_from_levels  # noqa: E402
from tools.extraction.runner import build_extraction_model, build_settings, init_distributed  # noqa: E402
from tools.extraction.sources import prepare_image  # noqa: E402

_DEFAULTS = {
    "MODEL.DEPTH": "50",
    "RESNET.TRANS_FUN": "bottleneck_transform",
    "RESNET.WIDTH_PER_GROUP": "64",
    "RESNET.NUM_GROUPS": "1",
    "MODEL.LOCAL_STRIDE": "16",
    "MODEL.HEADS.REDUCTION_DIM": "2048",
    "MODEL.LOCAL.TYPE": "autoencoder",
    "MODEL.LOCAL.ATTENTION_DIM": "512",
    "MODEL.LOCAL.DESCRIPTOR_DIM": "128",
    "EXTRACT.GLOBAL_SCALES": "[0.7071, 1.0, 1.4142]",
    "EXTRACT.LOCAL_SCALES": "[0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0]",
    "EXTRACT.MAX_IMAGE_SIZE": "1024",
    "EXTRACT.MAX_FEATURES": "1000",
    "EXTRACT.ATTENTION_THRESHOLD": "0.0",
    "EXTRACT.NMS_IOU": "1.0",
    "EXTRACT.FLOAT16": "True",
    "EXTRACT.GLOBAL": "True",
    "EXTRACT.LOCAL": "True",
}
BENCHMARK_DEFAULTS = [item for pair in _DEFAULTS.items() for item in pair]  # KEY VALUE ...


def synthetic_image(height=768, width=1024, seed=0):
    """A smooth random picture, so that attention and selection see varied content."""
    from PIL import Image

    coarse = np.random.default_rng(seed).integers(
        0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8
    )
    return np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device):
    """(wall seconds, CPU seconds of this process over all its threads, result)."""
    _synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    _synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def bare_backbone(backbone, inputs, global_scales):
    """The shared map at every local-scale input, the global map continued from it at the global
    scales."""
    with torch.inference_mode():
        for scale, image in inputs.items():
            _bare_pass(backbone, image, scale in global_scales)


def _bare_pass(backbone, image, continue_to_global):
    # One scale per call, like model.extract: its maps are freed before the next scale allocates its
    # own.
    shared = backbone.forward_shared(image)
    if continue_to_global:
        backbone.global_map(shared)


def added_work(model, normalised, inputs, image_size, geometry, settings, device, runs):
    """Seconds of each part full extraction adds to the bare backbone, timed alone on the same maps
    (min of runs).

    Short parts timed in isolation resolve the overhead better than the difference of two long,
    noisy totals.
    """
    local_scales, global_scales = set(settings.local_scales), set(settings.global_scales)
    with torch.inference_mode():
        shared = {scale: model.backbone.forward_shared(image) for scale, image in inputs.items()}
        global_maps = {scale: model.backbone.global_map(shared[scale]) for scale in global_scales}

        def resizes():
            return [resize_image(normalised, tuple(image.shape[-2:])) for image in inputs.values()]

        def local_heads():
            return {
                scale: model.local_head.extract(model.backbone.local_map(shared[scale]))
                for scale in local_scales
            }

        def global_heads():
            return [model.embed(global_maps[scale]) for scale in global_scales]

        levels = [
            {
                "scale": scale,
                "network_size": tuple(inputs[scale].shape[-2:]),
                "attention": attention[0, 0],
                "local": local[0],
            }
            for scale, (attention, local) in sorted(local_heads().items())
        ]

        def selection():
            return select_from_levels(levels, image_size, geometry, settings)

        parts = {
            "pyramid resizes": resizes,
            "local heads": local_heads,
            "global heads": global_heads,
            "selection": selection,
        }
        return {
            name: min(_timed(part, device)[0] for _ in range(runs)) for name, part in parts.items()
        }


def benchmark(cfg, image, runs):
    """Return a dict of medians (seconds) for full and bare, the feature counts and the bytes per
    image."""
    _, device = init_distributed(cfg)
    model = build_extraction_model(cfg, device)
    settings = build_settings(cfg)
    geometry = tuple(model.local_geometry)
    normalised, inputs = pyramid_inputs(cfg, image, settings, device)

    def full():
        return extract_image(model, normalised, image.shape[:2], geometry, settings)

    def bare():
        return bare_backbone(model.backbone, inputs, set(settings.global_scales))

    full_times, bare_times, features = interleaved_runs(full, bare, device, runs)
    parts = added_work(model, normalised, inputs, image.shape[:2], geometry, settings, device, runs)
    return {
        "full": statistics.median(t[0] for t in full_times),
        "bare": statistics.median(t[0] for t in bare_times),
        "bare_min": min(t[0] for t in bare_times),
        "full_min": min(t[0] for t in full_times),
        "parts": parts,
        "full_cpu": statistics.median(t[1] for t in full_times),
        "bare_cpu": statistics.median(t[1] for t in bare_times),
        "device": str(device),
        "num_local": len(features["local"]["scores"]),
        "global_dim": len(features["global"]),
        "input_size": tuple(normalised.shape[-2:]),
        "local_stride": geometry[1],
        "bytes_per_image": store_bytes_per_image(features, cfg.EXTRACT.FLOAT16),
    }


def pyramid_inputs(cfg, image, settings, device):
    """(the normalised image [1, 3, h, w], {scale: its resized copy} for every scale)."""
    prepared = to_chw_tensor(prepare_image(image, cfg.EXTRACT.MAX_IMAGE_SIZE)).to(device)
    normalised = build_normalizer(cfg)(prepared)[None]
    height, width = normalised.shape[-2:]
    with torch.inference_mode():
        inputs = {
            scale: resize_image(normalised, pyramid_size(height, width, scale))
            for scale in sorted(set(settings.local_scales) | set(settings.global_scales))
        }
    return normalised, inputs


def interleaved_runs(full, bare, device, runs):
    """([(wall, CPU seconds)] of full, of bare, the features of full) after one warm-up each; the
    runs alternate, so that a change of machine load hits both alike."""
    full(), bare()  # warm-up: first calls allocate and pick kernels
    full_times, bare_times = [], []
    for run in range(runs):
        *full_time, features = _timed(full, device)
        *bare_time, _ = _timed(bare, device)
        full_times.append(full_time)
        bare_times.append(bare_time)
        print(
            f"run {run + 1}: full {full_time[0]:.3f} s (CPU {full_time[1]:.3f} s), bare "
            f"{bare_time[0]:.3f} s (CPU {bare_time[1]:.3f} s)",
            flush=True,
        )
    return full_times, bare_times, features


def store_bytes_per_image(features, float16):
    """The bytes of a feature store holding this one image's features."""
    with tempfile.TemporaryDirectory() as folder:
        write_store(folder, ["image"], features["global"][None], [features["local"]],
                    float16=float16)  # fmt: skip
        return open_store(folder).bytes_per_image()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cfg", dest="cfg_file", default="", help="YAML config file (the defaults override it)"
    )
    parser.add_argument(
        "--image", default="", help="image file (default: a synthetic 1024 x 768 picture)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="timed runs of each (the median is reported)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_cfg_or_exit(args.cfg_file, [*BENCHMARK_DEFAULTS, *args.opts])
    image = read_image(args.image) if args.image else synthetic_image()
    torch.set_grad_enabled(False)
    print(
        f"model {describe_backbone(cfg)}, image {image.shape[1]} x "
        f"{image.shape[0]}, {len(cfg.EXTRACT.LOCAL_SCALES)} local + "
        f"{len(cfg.EXTRACT.GLOBAL_SCALES)} global scales, top {cfg.EXTRACT.MAX_FEATURES}, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    result = benchmark(cfg, image, args.runs)
    report(result, args.runs, cfg.EXTRACT.FLOAT16)
    return 0


def report(result, runs, float16):
    print(
        f"device: {result['device']}, network input {result['input_size'][1]} x "
        f"{result['input_size'][0]}, local stride {result['local_stride']}"
    )
    for label, key in (("(a) full extraction:", "full"), ("(b) bare backbone:  ", "bare")):
        print(
            f"{label} {result[key]:.3f} s per image (median of {runs}; min "
            f"{result[key + '_min']:.3f})"
        )
    added = sum(result["parts"].values())
    print(
        "added work, each part alone (min of runs): "
        + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in result["parts"].items())
        + f"; total {added:.3f} s = {100 * added / result['bare_min']:.1f}% of the fastest bare run"
    )
    print(
        f"features: {result['num_local']} local, {result['global_dim']}-d global; store "
        f"{result['bytes_per_image']:.0f} bytes per image "
        f"({'float16' if float16 else 'float32'} descriptors)"
    )
    if result["device"] == "cpu":  # CPU time is what a shared, busy machine distorts least
        print(
            f"CPU time per image (all threads): full {result['full_cpu']:.3f} s, bare "
            f"{result['bare_cpu']:.3f} s, CPU-time ratio "
            f"{result['full_cpu'] / result['bare_cpu']:.3f}"
        )
    print(describe_machine(result["device"]))
    print(f"ratio: {result['full'] / result['bare']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
