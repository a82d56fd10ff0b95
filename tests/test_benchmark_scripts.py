"""Every benchmark script still runs (at toy sizes) and ends with its headline line, after a line
that names the machine (CPU model, torch's CPU capability, threads, device): a benchmark that broke
with a refactor would otherwise be found only on the GPU machine. The timings themselves are not
checked here."""

import re

import pytest

from tests.tiny import REPO, TINY_HEADS, TINY_R18, run_benchmark

SHARED_GND = REPO.parent / "shared" / "data" / "revisitop" / "gnd_roxford5k.pkl"
HEADLINE = re.compile(r"^ratio: \d+(\.\d+)?$")
MACHINE = re.compile(
    r"^machine: CPU .+; torch CPU capability \w+.*; \d+ torch threads; device (cpu|cuda)"
)

CASES = {
    "train": [
        "--depth",
        "18",
        "--classes",
        "10",
        "--batch",
        "2",
        "--size",
        "64",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--profile",
    ],
    "extract": [
        "--runs",
        "1",
        *TINY_R18,
        "EXTRACT.MAX_IMAGE_SIZE",
        "128",
        "EXTRACT.MAX_FEATURES",
        "50",
        *TINY_HEADS,
    ],
    "rerank": ["--pairs", "3", "--baseline-pairs", "2"],
    "dba": ["--rows", "3000", "--dim", "32"],
    "eval": ["--rows", "6000", "--gnd", str(SHARED_GND)],
    "store_digest": ["--rows", "3000", "--dim", "64", "--folder", "store"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_prints_its_headline(name, tmp_path):
    if name == "eval" and not SHARED_GND.exists():
        pytest.skip(f"the ROxford ground truth is not at {SHARED_GND}")
    lines = run_benchmark(name, CASES[name], tmp_path)
    *earlier, last_line = lines
    assert HEADLINE.match(last_line), lines[-20:]
    assert any(MACHINE.match(line) for line in earlier), lines[-20:]
