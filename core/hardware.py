"""What the machine runs fast: the precision of a hot path's low-precision product, and a one-line
description of the machine for benchmarks.

A bfloat16 product is fast on a GPU and on CPUs with native bfloat16 (AVX512_BF16, AMX), but on a
CPU without it the library emulates it, 5-80x slower than float32. An int8 product (exact int32
sums) is about twice as fast as float32 on AVX2 CPUs. Hot paths whose product may run in a lower
precision ask ``matmul_precision(device, requested)``:
- an explicit ``float32``, ``bfloat16`` or ``int8`` (CPU only) is obeyed;
- ``auto`` on CUDA: bfloat16 where the card supports it, else float32;
- ``auto`` on a CPU: a short probe (a few ms) times the products of the matcher's shape class in
  float32, int8 and, where the CPU flags show native bfloat16, bfloat16 (whether the kernel
  reached is native also depends on the library's dispatch: ATEN_CPU_CAPABILITY,
  ONEDNN_MAX_CPU_ISA, the build); the fastest is chosen, float32 on a tie. Without native bfloat16
  the capability rules bfloat16 out unprobed. Decided once per process and cached.
"""

import functools
import os
import platform
import time

import torch

from core.distributed import available_cores

PRECISIONS = ("auto", "float32", "bfloat16", "int8")
# rows x columns of the probe's product, a quarter of one matcher image pair, and each precision's
# inner width there (128-d descriptors + the norm column, aligned as the matcher aligns them)
PROBE_SHAPE = (256, 1024)
PROBE_WIDTHS = {"float32": 136, "int8": 128, "bfloat16": 160}
PROBE_ROUNDS = 3
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_TORCH_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # newer torch only
_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def check_precision(value, key="SV.MATCH_PRECISION"):
    """value if it is one of PRECISIONS; else ValueError naming the config key."""
    if value not in PRECISIONS:
        raise ValueError(f"config key {key} = {value!r}: expected one of {', '.join(PRECISIONS)}")
    return value


@functools.lru_cache(maxsize=1)
def _cpuinfo():
    """{field: value} of the first processor in /proc/cpuinfo; {} where there is none."""
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read().split("\n\n")[0]
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, value in fields}


def cpu_model():
    """'AMD EPYC (family 25, model 17)' from /proc/cpuinfo, else what platform knows."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def native_bfloat16_cpu():
    """True / False: whether the CPU has native bfloat16 arithmetic; None where unknown."""
    checks = [getattr(torch._C._cpu, name, None) for name in _TORCH_CHECKS]
    if any(check is not None for check in checks):
        return any(check() for check in checks if check is not None)
    flags = _cpuinfo().get("flags")
    if flags is None:
        return None
    return any(flag in flags.split() for flag in _NATIVE_BF16_FLAGS)


def _product(name):
    if name == "int8":
        return torch._int_mm
    return torch.mm


def probe_seconds(precisions=tuple(PROBE_WIDTHS), rounds=PROBE_ROUNDS, shape=PROBE_SHAPE):
    """{precision: fastest of `rounds` timings} of one [m, w] x [w, n] product in each precision,
    on this process's threads (a few ms in all; ~0.1 s more where bfloat16 is emulated)."""
    generator = torch.Generator().manual_seed(0)
    operands = {}
    for name in precisions:
        left, right = (torch.randn(size, PROBE_WIDTHS[name], generator=generator) for size in shape)
        if name == "int8":
            left, right = ((20 * side).round().clamp(-63, 63) for side in (left, right))
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}[name]
        operands[name] = (left.to(dtype), right.to(dtype).T)
    best = {name: float("inf") for name in operands}
    with torch.no_grad():
        for name, (a, b) in operands.items():
            _product(name)(a, b)  # warm-up: kernel selection, first-touch
        for _ in range(rounds):
            for name, (a, b) in operands.items():
                start = time.perf_counter()
                _product(name)(a, b)
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def decide_cpu_precision(native, probe):
    """The fastest precision of a CPU: native (native_bfloat16_cpu()) and probe (a function of the
    precisions to time, returning probe_seconds()'s dict); float32 wins ties."""
    candidates = ("float32", "int8") if native is False else ("float32", "int8", "bfloat16")
    seconds = probe(candidates)
    return min(candidates, key=lambda name: seconds[name])  # the first of equals: float32


@functools.lru_cache(maxsize=1)
def cpu_precision():
    """The CPU's choice for `auto`, decided once per process."""
    return decide_cpu_precision(native_bfloat16_cpu(), probe_seconds)


def matmul_precision(device, requested="auto"):
    """'float32', 'bfloat16' or 'int8': the precision a hot path's candidate product runs in on
    device."""
    check_precision(requested)
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return cpu_precision()
    return "float32"


def describe_machine(device="cpu"):
    """One line: CPU model, torch's CPU capability (and any forcing variables), threads, device."""
    device = torch.device(device)
    forced = [f"{name}={os.environ[name]}" for name in _ENVIRONMENT if os.environ.get(name)]
    native = {True: "yes", False: "no", None: "unknown"}[native_bfloat16_cpu()]
    line = (
        f"machine: CPU {cpu_model()}, {available_cores()} cores available; torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
        + (f" ({', '.join(forced)})" if forced else "")
        + f"; native bfloat16 {native}; {torch.get_num_threads()} torch threads; device {device}"
    )
    if device.type == "cuda":
        line += f" ({torch.cuda.get_device_name(device)})"
    return line
