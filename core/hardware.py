"""What the machine runs fast: the precision of a hot path's low-precision product, and a one-line
description of the machine for benchmarks.

A bfloat16 product is fast on a GPU and on CPUs with native bfloat16 (AVX512_BF16, AMX), but on a
CPU without it the library emulates it, several times (up to 100x) slower than float32. Hot paths
that may run a product in bfloat16 ask ``matmul_precision(device, requested)``:
- an explicit ``float32`` or ``bfloat16`` is obeyed;
- ``auto`` on CUDA: bfloat16 where the card supports it, else float32;
- ``auto`` on a CPU whose flags show no native bfloat16: float32 (the capability decides);
- ``auto`` on a CPU with native bfloat16: a short probe times both products of the matcher's shape
  class (whether the kernel reached is native also depends on the library's dispatch,
  ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and the build) and the faster one is chosen (float32 on a
  tie). Decided once per process and cached.
"""

import functools
import os
import platform
import time

import torch

from core.distributed import available_cores

PRECISIONS = ("auto", "float32", "bfloat16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROBE_SHAPE = (256, 160, 1024)  # rows x width x columns: a quarter of one matcher image pair
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


def probe_seconds(rounds=PROBE_ROUNDS, shape=PROBE_SHAPE):
    """{precision: fastest of `rounds` timings} of one [m, w] x [w, n] product in each precision,
    on this process's threads (a few ms where bfloat16 is native; ~0.1 s where it is emulated)."""
    generator = torch.Generator().manual_seed(0)
    rows, width, columns = shape
    left = torch.randn(rows, width, generator=generator)
    right = torch.randn(columns, width, generator=generator)
    operands = {name: (left.to(dtype), right.to(dtype)) for name, dtype in DTYPES.items()}
    best = {name: float("inf") for name in DTYPES}
    with torch.no_grad():
        for a, b in operands.values():
            torch.mm(a, b.T)  # warm-up: kernel selection, first-touch
        for _ in range(rounds):
            for name, (a, b) in operands.items():
                start = time.perf_counter()
                torch.mm(a, b.T)
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def decide_cpu_precision(native, probe):
    """'float32' or 'bfloat16' for a CPU: native (native_bfloat16_cpu()) and probe (a function
    returning probe_seconds()'s dict), which runs only when the capability does not decide."""
    if native is False:
        return "float32"
    seconds = probe()
    return "bfloat16" if seconds["bfloat16"] < seconds["float32"] else "float32"


@functools.lru_cache(maxsize=1)
def cpu_precision():
    """The CPU's choice for `auto`, decided once per process."""
    return decide_cpu_precision(native_bfloat16_cpu(), probe_seconds)


def matmul_precision(device, requested="auto"):
    """'float32' or 'bfloat16': the precision a hot path's candidate product runs in on device."""
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
