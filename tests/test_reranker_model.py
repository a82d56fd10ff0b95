"""The learned re-ranker (modeling/reranker.py): one logit per pair, invariant to the order of the
locals and to padding, asymmetric counts, the binary path (sign in evaluation; in training erf, or
sign with erf's gradient), a gradient for every parameter, and the weights file."""

import numpy as np
import pytest
import torch

from core.config import ConfigError, load_cfg
from modeling.reranker import build_reranker, combine_scores
from modeling.reranker_binary import pack_codes, unpack_codes
from modeling.reranker_inputs import LocalBatch, collate_locals, scale_index, top_locals
from modeling.reranker_weights import load_reranker, save_reranker

LOCAL_DIM, GLOBAL_DIM = 16, 12


def tiny_cfg(*opts):
    base = ["RERANKER.DIM", "32", "RERANKER.DEPTH", "2", "RERANKER.FFN_DIM", "64"]
    base += ["RERANKER.GLOBAL_TOKEN", "True", "RERANKER.XY_ENCODING", "True"]
    return load_cfg("", [*base, *opts])


def tiny_model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_reranker(tiny_cfg(*opts), LOCAL_DIM, GLOBAL_DIM).eval()


def random_image(rng, count):
    descriptors = rng.standard_normal((count, LOCAL_DIM)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return {
        "descriptors": descriptors,
        "scales": rng.integers(0, 7, count),
        "locations": rng.uniform(0, 256, (count, 2)).astype(np.float32),
        "scores": rng.uniform(0, 3, count).astype(np.float32),
    }


def batch_of(images, globals_, n=None):
    return collate_locals(images, n=n, global_descriptors=np.stack(globals_))


def permuted(image, order):
    return {key: value[order] for key, value in image.items()}


def padded(batch, extra):
    """The batch with `extra` more padded slots holding garbage."""
    b, _, d = batch.descriptors.shape
    return LocalBatch(
        torch.cat([batch.descriptors, torch.randn(b, extra, d)], 1),
        torch.cat([batch.scales, torch.full((b, extra), 3)], 1),
        torch.cat([batch.padding, torch.ones(b, extra, dtype=torch.bool)], 1),
        torch.cat([batch.locations, torch.rand(b, extra, 2) * 1e4], 1),
        batch.global_descriptor,
    )


@pytest.mark.parametrize("binary", [False, True])
def test_order_of_locals_and_padding_change_nothing(binary):
    model = tiny_model("RERANKER.BINARY", str(binary))
    rng = np.random.default_rng(0)
    queries = [random_image(rng, 9), random_image(rng, 4)]
    database = [random_image(rng, 3), random_image(rng, 7)]
    gq = [rng.standard_normal(GLOBAL_DIM) for _ in queries]
    gd = [rng.standard_normal(GLOBAL_DIM) for _ in database]
    with torch.no_grad():
        base = model(batch_of(queries, gq), batch_of(database, gd))
        shuffled_q = [permuted(im, rng.permutation(len(im["scales"]))) for im in queries]
        shuffled_d = [permuted(im, rng.permutation(len(im["scales"]))) for im in database]
        moved = model(padded(batch_of(shuffled_q, gq), 5), padded(batch_of(shuffled_d, gd), 2))
        alone = model(batch_of(queries[1:], gq[1:]), batch_of(database[1:], gd[1:]))
    assert base.shape == (2,)
    torch.testing.assert_close(moved, base, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, base[1:], rtol=0, atol=1e-5)  # row 1 had padding before


def test_the_logit_reads_both_images_and_an_empty_image_is_allowed():
    model = tiny_model()
    rng = np.random.default_rng(1)
    query, other = random_image(rng, 12), random_image(rng, 12)
    g = [rng.standard_normal(GLOBAL_DIM)]
    with torch.no_grad():
        same = model(batch_of([query], g), batch_of([query], g))
        different = model(batch_of([query], g), batch_of([other], g))
        empty = model(batch_of([query], g), batch_of([permuted(other, [])], g))
    assert not torch.allclose(same, different)
    assert torch.isfinite(empty).all()


def test_asymmetric_counts_and_a_cut_to_n():
    model = tiny_model()
    rng = np.random.default_rng(2)
    queries = [random_image(rng, 30) for _ in range(3)]
    database = [random_image(rng, 5) for _ in range(3)]
    g = [rng.standard_normal(GLOBAL_DIM) for _ in range(3)]
    q = batch_of([top_locals(im, 20) for im in queries], g)
    d = batch_of([top_locals(im, 4) for im in database], g)
    assert q.descriptors.shape == (3, 20, LOCAL_DIM) and d.descriptors.shape == (3, 4, LOCAL_DIM)
    with torch.no_grad():
        logits = model(q, d)
        cut = model(batch_of(queries, g, n=20), batch_of(database, g, n=4))
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    # collate's cut keeps the first n; top_locals sorted by attention first: different sets
    assert not torch.allclose(logits, cut)


def test_top_locals_sorts_by_attention_and_scale_index():
    local = {
        "descriptors": np.eye(4, dtype=np.float16),
        "scales": np.array([0.25, 1.0, 1.4142, 2.0], np.float32),
        "locations": np.zeros((4, 2), np.float32),
        "scores": np.array([0.5, 3.0, 1.0, 3.0], np.float32),
    }
    top = top_locals(local, 3)
    assert top["scores"].tolist() == [3.0, 3.0, 1.0]  # ties keep the store's order
    assert top["descriptors"].argmax(1).tolist() == [1, 3, 2]
    assert top["scales"].tolist() == [4, 6, 5]
    assert scale_index([0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0, 4.0]).tolist() == [
        0, 1, 2, 3, 4, 5, 6, 6,
    ]  # fmt: skip


def binary_pairs(seed=3):
    rng = np.random.default_rng(seed)
    g = [rng.standard_normal(GLOBAL_DIM) for _ in range(2)]
    q = batch_of([random_image(rng, 6), random_image(rng, 6)], g)
    d = batch_of([random_image(rng, 5), random_image(rng, 5)], g)
    return q, d


def test_binary_path_uses_sign_in_evaluation_and_erf_in_training():
    model = tiny_model("RERANKER.BINARY", "True", "RERANKER.BITS", "32")
    model.binary.straight_through = False
    q, d = binary_pairs()
    # the same signs of the projection, other magnitudes: z -> 1.5 z
    scaled = d._replace(descriptors=d.descriptors * 1.5)
    with torch.no_grad():
        codes = model.database_codes(d.descriptors)
        assert set(codes.unique().tolist()) <= {-1.0, 1.0} and codes.shape == (2, 5, 32)
        evaluated = model(q, d)
        torch.testing.assert_close(model(q, scaled), evaluated, rtol=0, atol=0)
        coded = model(q, d._replace(descriptors=codes), database_coded=True)
        torch.testing.assert_close(coded, evaluated, rtol=0, atol=1e-6)
        model.train()
        trained = model(q, d)
        assert not torch.allclose(model(q, scaled), trained)  # erf sees the magnitudes
        expected = torch.erf(model.binary.sharpness * model.binary(d.descriptors))
        assert torch.equal(model.binary.encode(d.descriptors, hard=False), expected)


def test_straight_through_trains_on_signs_with_the_gradient_of_erf():
    model = tiny_model("RERANKER.BINARY", "True", "RERANKER.BITS", "32")
    assert model.binary.straight_through  # RERANKER.BINARY_STRAIGHT_THROUGH defaults to True
    q, d = binary_pairs()
    with torch.no_grad():
        evaluated = model(q, d)
    model.train()
    torch.testing.assert_close(model(q, d), evaluated, rtol=0, atol=1e-6)  # training sees signs
    weight, x = model.binary.weight, d.descriptors
    probe = torch.randn(*x.shape[:-1], weight.shape[0])
    hard = model.binary.encode(x, hard=False)
    assert set(hard.detach().unique().tolist()) <= {-1.0, 1.0}
    (straight,) = torch.autograd.grad((hard * probe).sum(), weight)
    soft = torch.erf(model.binary.sharpness * model.binary(x))
    (surrogate,) = torch.autograd.grad((soft * probe).sum(), weight)
    torch.testing.assert_close(straight, surrogate)
    assert straight.abs().sum() > 0


def test_codes_pack_to_bytes_and_back():
    codes = torch.where(torch.rand(3, 5, 128) > 0.5, 1.0, -1.0)
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (3, 5, 16)
    assert torch.equal(unpack_codes(packed), codes)


def test_a_gradient_reaches_every_parameter():
    model = tiny_model("RERANKER.BINARY", "True", "RERANKER.BITS", "16").train()
    rng = np.random.default_rng(4)
    images = [random_image(rng, 14) for _ in range(4)]
    for image in images:
        image["scales"] = np.arange(14) % 7  # every scale row is used
    g = [rng.standard_normal(GLOBAL_DIM) for _ in range(4)]
    logits = model(batch_of(images, g), batch_of(images[::-1], g))
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_weights_file_round_trip(tmp_path):
    model = tiny_model("RERANKER.BINARY", "True", "RERANKER.BITS", "16", seed=5)
    section = tiny_cfg("RERANKER.BINARY", "True", "RERANKER.BITS", "16").RERANKER
    info = {"lambda": 0.4, "gamma": 2.0, "provenance": {"checkpoint_sha256": "ab"}}
    path = save_reranker(str(tmp_path / "r.pth"), model, section, LOCAL_DIM, GLOBAL_DIM, info)
    loaded, read = load_reranker(path)
    assert read["lambda"] == 0.4 and read["provenance"] == {"checkpoint_sha256": "ab"}
    assert read["config"]["BITS"] == 16 and "state_dict" not in read
    rng = np.random.default_rng(6)
    g = [rng.standard_normal(GLOBAL_DIM)]
    q, d = batch_of([random_image(rng, 5)], g), batch_of([random_image(rng, 4)], g)
    with torch.no_grad():
        torch.testing.assert_close(loaded(q, d), model(q, d), rtol=0, atol=0)


def test_lambda_one_keeps_the_global_score_and_an_unknown_type_is_named():
    scores = torch.tensor([0.9, 0.2, 0.5])
    assert torch.equal(combine_scores(scores, torch.tensor([-9.0, 9.0, 0.0]), 1.0, 3.0), scores)
    with pytest.raises(ConfigError, match="RERANKER.TYPE"):
        build_reranker(tiny_cfg("RERANKER.TYPE", "rrt"), LOCAL_DIM)


def test_best_similarities_leave_padding_out_and_fill_short_images():
    from modeling.reranker import best_similarities

    xa = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    xb = torch.tensor([[[3.0, 0.0], [0.6, 0.8], [5.0, 5.0]]])
    pa, pb = torch.tensor([[False, False]]), torch.tensor([[False, False, True]])
    to_a, to_b = best_similarities(xa, pa, xb, pb, 3)
    torch.testing.assert_close(to_a, torch.tensor([[[1.0, 0.6, -1.0], [0.8, 0.0, -1.0]]]))
    torch.testing.assert_close(to_b[0, :2], torch.tensor([[1.0, 0.0, -1.0], [0.8, 0.6, -1.0]]))
