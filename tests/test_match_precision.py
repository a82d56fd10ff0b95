"""The matcher's candidate precision (SV.MATCH_PRECISION, core/hardware.py): every precision gives
the matches of exact float32 matching, and `auto` never picks a precision that was measured
slower."""

import numpy as np
import pytest
import torch

from core import hardware
from core.config import load_cfg
from tools.rerank import matching
from tools.rerank.matching import putative_matches
from tools.rerank.spatial_verification import VerificationOptions, options_from_cfg


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def near_bound_images(seed=0, queries=3000, dim=128):
    """A query whose descriptors lie at distance 1.0 (in float64) from a partner in one of three
    index images of uneven sizes and lengths, so that float32 rounding alone decides about half of
    them."""
    rng = np.random.default_rng(seed)
    images = [
        (_unit(rng.standard_normal((count, dim))) * rng.uniform(0.8, 1.2, (count, 1)))
        for count in (300, 120, 0, 50)
    ]
    pool = np.concatenate(images)
    partners = pool[rng.integers(0, len(pool), queries)]
    offsets = _unit(rng.standard_normal((queries, dim)))  # length exactly 1 before rounding
    query = (partners + offsets).astype(np.float32)
    return query, [image.astype(np.float32) for image in images]


def _exact(monkeypatch, query, images, **options):
    """Matches with the candidate pass keeping every row: plain float32 matching."""
    with monkeypatch.context() as patch:
        patch.setattr(
            matching,
            "_candidate_rows",
            lambda query, norms, augmented, *_: np.ones((len(norms), len(augmented)), bool),
        )
        return putative_matches(query, images, **options)


@pytest.mark.parametrize(
    "options", [{}, {"ratio_test": 0.95}, {"mutual": True}], ids=["plain", "ratio", "mutual"]
)
def test_every_candidate_precision_gives_the_matches_of_exact_float32(monkeypatch, options):
    query, images = near_bound_images()
    expected = _exact(monkeypatch, query, images, **options)
    assert 200 < sum(len(rows) for rows, _ in expected) < len(query) - 200  # the bound decides
    for precision in ("float32", "bfloat16", "int8", "auto"):
        found = putative_matches(query, images, precision=precision, **options)
        for (rows, cols), (want_rows, want_cols) in zip(found, expected):
            assert np.array_equal(rows, want_rows) and np.array_equal(cols, want_cols), precision


def test_the_candidate_pass_drops_most_rows_in_each_precision(monkeypatch):
    """The bound is tight enough to be worth it: rows far from any partner are left out."""
    rng = np.random.default_rng(1)
    query = _unit(rng.standard_normal((500, 64))).astype(np.float32)
    images = [_unit(rng.standard_normal((200, 64))).astype(np.float32)]
    original = matching._match_image
    for precision in ("float32", "bfloat16", "int8"):
        seen = []

        def counting(query, rows, *rest, seen=seen):
            seen.append(len(rows))
            return original(query, rows, *rest)

        with monkeypatch.context() as patch:
            patch.setattr(matching, "_match_image", counting)
            putative_matches(query, images, precision=precision)
        assert sum(seen) < 0.05 * len(query), precision


def test_each_error_bound_covers_the_product_it_bounds():
    """Each candidate product lies within its bound of the float64 affinity (the float32 bound
    covers both stages' float32 sums, so half of it must cover one)."""
    query, images = near_bound_images(seed=2, queries=400)
    counts = [len(image) for image in images]
    dim = query.shape[1]
    augmented = matching._augmented_index(images, dim)
    _, largest = matching._largest_norm(augmented, counts, dim)
    rows = np.zeros((len(query), matching._width(dim)), np.float32)
    rows[:, :dim], rows[:, dim] = query, 1.0
    norms = np.einsum("ij,ij->i", query, query)
    real = augmented[:, :, dim] > -1e29
    exact = np.einsum("mw,bnw->mbn", rows.astype(np.float64), augmented.astype(np.float64))
    exact_best = np.where(real[None], exact, -np.inf).max(axis=2)
    filled = np.array(counts) > 0
    for share, (best, error) in (
        (0.5, matching._float32_best(torch.from_numpy(rows), norms, augmented, counts, dim)),
        (
            1.0,
            matching._bfloat16_best(
                torch.from_numpy(rows).to(torch.bfloat16), norms, augmented, counts, dim
            ),
        ),
    ):
        gap = np.abs(best[:, filled] - exact_best[:, filled])
        assert (gap <= share * error[:, None]).all() and gap.max() > 0
    # int8: an upper estimate (the norm term is the image's smallest), rounding errors bounded
    precision, operand = matching._candidate_query("int8", torch.from_numpy(rows), dim)
    best, error = matching._int8_best(operand, norms, augmented, counts, dim)
    assert (exact_best[:, filled] <= best[:, filled] + error[:, None]).all()
    assert (error < 0.15).all()


@pytest.mark.parametrize("int8", [5e-4, 2e-3, 0.01])
@pytest.mark.parametrize("bfloat16", [2e-4, 1e-3, 1.9e-3, 2e-3, 0.1])
def test_auto_never_picks_a_precision_the_probe_found_slower(int8, bfloat16):
    seconds = {"float32": 2e-3, "int8": int8, "bfloat16": bfloat16}
    asked = []
    chosen = hardware.decide_cpu_precision(True, lambda names: asked.append(names) or seconds)
    assert asked == [("float32", "int8", "bfloat16")]
    assert all(seconds[chosen] <= seconds[name] for name in seconds)
    if seconds[chosen] == seconds["float32"]:
        assert chosen == "float32"  # ties go to float32


def test_a_cpu_without_native_bfloat16_never_probes_or_takes_bfloat16():
    seconds = {"float32": 2e-3, "int8": 3e-3, "bfloat16": 1e-4}
    asked = []
    chosen = hardware.decide_cpu_precision(False, lambda names: asked.append(names) or seconds)
    assert chosen == "float32" and asked == [("float32", "int8")]


def test_auto_is_decided_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "native_bfloat16_cpu", lambda: True)
    monkeypatch.setattr(
        hardware,
        "probe_seconds",
        lambda names: calls.append(names) or {"float32": 1.0, "int8": 0.5, "bfloat16": 0.1},
    )
    hardware.cpu_precision.cache_clear()
    try:
        assert [hardware.matmul_precision("cpu") for _ in range(3)] == ["bfloat16"] * 3
        assert hardware.matmul_precision("cpu", "float32") == "float32"
        assert len(calls) == 1
    finally:
        hardware.cpu_precision.cache_clear()


def test_the_probe_times_both_products():
    seconds = hardware.probe_seconds(rounds=1, shape=(8, 16))
    assert set(seconds) == {"float32", "bfloat16", "int8"}
    assert all(0 < value < 10 for value in seconds.values())


def test_a_bad_precision_names_its_config_key():
    cfg = load_cfg(opts=["SV.MATCH_PRECISION", "fast"])
    with pytest.raises(
        ValueError, match="SV.MATCH_PRECISION = 'fast'.*auto, float32, bfloat16, int8"
    ):
        options_from_cfg(cfg)
    assert options_from_cfg(load_cfg()).match_precision == "auto"
    assert VerificationOptions(match_precision="bfloat16").match_precision == "bfloat16"
    with pytest.raises(ValueError, match="SV.MATCH_PRECISION"):
        putative_matches(np.ones((2, 4), np.float32), [np.ones((2, 4))], precision="half")


def test_the_machine_line_names_cpu_capability_threads_and_device():
    line = hardware.describe_machine("cpu")
    assert line.startswith("machine: CPU ")
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in line
    assert f"{torch.get_num_threads()} torch threads" in line and line.endswith("device cpu")
