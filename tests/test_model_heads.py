"""Margin heads against their closed forms, GeM limits, and where each loss sends its gradient."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling import build_loss, build_model
from modeling.margin_heads import ArcFaceHead, CosineHead, CurricularArcFaceHead
from modeling.pooling import GeM
from tests.small_models import tiny_cfg


def embeddings_with_obtuse_targets(head, labels, generator):
    """Random embeddings; the first half point away from their class (theta near pi, so theta + m >=
    pi)."""
    embedding = torch.randn(len(labels), head.in_features, generator=generator, dtype=torch.float64)
    half = len(labels) // 2
    weight = head.weight.detach().to(torch.float64)
    # a perturbation small relative to each class vector: theta within ~1e-3 rad of pi, whatever the
    # weight init
    target = weight[labels[:half]]
    embedding[:half] = -target + 1e-3 * target.norm(dim=1, keepdim=True) * F.normalize(
        embedding[:half], dim=1
    )
    return embedding


def closed_form_arcface(embedding, weight, labels, scale, margin):
    cosine = F.normalize(embedding, dim=1) @ F.normalize(weight, dim=1).T
    theta = torch.acos(cosine.clamp(-1, 1))
    rows = torch.arange(len(labels))
    target_theta = theta[rows, labels]
    expected = scale * cosine.clone()
    expected[rows, labels] = scale * torch.where(
        target_theta + margin < math.pi, torch.cos(target_theta + margin), torch.cos(target_theta)
    )
    return expected, target_theta


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_arcface_matches_closed_form(dtype, tolerance):
    generator = torch.Generator().manual_seed(0)
    head = ArcFaceHead(32, 50, scale=45.25, margin=0.1).to(dtype)
    labels = torch.randint(0, 50, (16,), generator=generator)
    embedding = embeddings_with_obtuse_targets(head, labels, generator)
    expected, target_theta = closed_form_arcface(
        embedding, head.weight.detach().double(), labels, 45.25, 0.1
    )
    assert (target_theta + 0.1 >= math.pi).sum() >= 4 and (target_theta + 0.1 < math.pi).sum() >= 4
    logits = head(embedding.to(dtype), labels)
    assert logits.dtype == dtype
    torch.testing.assert_close(logits.double(), expected, atol=tolerance, rtol=0)


def test_without_labels_every_head_gives_scaled_cosine():
    embedding = torch.randn(4, 8)
    for head_class in (CosineHead, ArcFaceHead, CurricularArcFaceHead):
        head = head_class(8, 6, scale=30.0, margin=0.15)
        expected = 30.0 * F.normalize(embedding, dim=1) @ F.normalize(head.weight.detach(), dim=1).T
        torch.testing.assert_close(head(embedding), expected)
    cosine = CosineHead(8, 6, scale=30.0)
    torch.testing.assert_close(cosine(embedding, torch.arange(4)), cosine(embedding))


def test_arcface_gradient_is_finite_at_zero_angle():
    head = ArcFaceHead(8, 3, scale=10.0, margin=0.1)
    # cos(theta) = 1 for the target
    embedding = head.weight.detach()[[0, 1]].clone().requires_grad_(True)
    head(embedding, torch.tensor([0, 1])).sum().backward()
    assert torch.isfinite(embedding.grad).all() and torch.isfinite(head.weight.grad).all()


def seed_arcface(features, weight, targets, t, scale, margin):
    """The seed's Arcface.forward (model/delg_model.py), transcribed with its in-place updates."""
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    threshold, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    cos_theta = F.linear(F.normalize(features), F.normalize(weight)).clamp(-1, 1)
    target_logit = cos_theta[torch.arange(0, features.size(0)), targets].view(-1, 1)
    sin_theta = torch.sqrt(1.0 - torch.pow(target_logit, 2))
    cos_theta_m = target_logit * cos_m - sin_theta * sin_m
    mask = cos_theta > cos_theta_m
    final_target_logit = torch.where(target_logit > threshold, cos_theta_m, target_logit - mm)
    hard_example = cos_theta[mask]
    t = target_logit.mean() * 0.01 + (1 - 0.01) * t
    cos_theta[mask] = hard_example * (t + hard_example)
    cos_theta.scatter_(1, targets.view(-1, 1).long(), final_target_logit)
    return cos_theta * scale, t


def test_curricular_head_matches_the_seed_formula_and_its_running_t():
    generator = torch.Generator().manual_seed(1)
    head = CurricularArcFaceHead(16, 20, scale=30.0, margin=0.15).double().train()
    t = torch.zeros(1, dtype=torch.float64)
    for _ in range(3):
        labels = torch.randint(0, 20, (12,), generator=generator)
        embedding = embeddings_with_obtuse_targets(head, labels, generator)
        expected, t = seed_arcface(embedding, head.weight.detach(), labels, t, 30.0, 0.15)
        torch.testing.assert_close(head(embedding, labels), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(head.t, t)
    assert head.t.abs().item() > 0
    head.eval()
    head(embedding, labels)
    torch.testing.assert_close(head.t, t)  # no update outside training


def test_gem_p1_is_average_pooling_and_large_p_approaches_max():
    x = torch.rand(3, 5, 7, 6, dtype=torch.float64) * 0.5 + 0.5
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    maximum = x.amax(dim=(2, 3))
    errors = [(maximum - GeM(p=p)(x)).abs().max().item() for p in (1.0, 3.0, 10.0, 100.0, 500.0)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-2 * maximum.min().item()


def test_gem_power_is_a_parameter_only_when_learnable():
    assert [name for name, _ in GeM(3.0, learnable=True).named_parameters()] == ["p"]
    fixed = GeM(3.0)
    assert list(fixed.parameters()) == [] and "p" in fixed.state_dict()
    # 40 ** 3 overflows float16; pooling runs in float32
    half = torch.rand(2, 4, 3, 3).to(torch.bfloat16) * 40
    assert GeM(3.0)(half).dtype == torch.bfloat16


@pytest.mark.parametrize("local_type, descriptor_dim", [("autoencoder", "8"), ("seed", "16")])
def test_local_losses_train_only_the_local_branch(local_type, descriptor_dim):
    cfg = tiny_cfg(
        "MODEL.LOCAL.TYPE",
        local_type,
        "MODEL.LOCAL.DESCRIPTOR_DIM",
        descriptor_dim,
        "MODEL.HEADS.GEM_LEARNABLE",
        "True",
    )
    torch.manual_seed(0)
    model, loss_fn = build_model(cfg), build_loss(cfg)
    labels = torch.tensor([0, 3])
    outputs = model(torch.randn(2, 3, 64, 64), labels)
    _, parts = loss_fn(outputs, labels)
    local_loss = (
        F.cross_entropy(outputs["attention_logits"], labels) + 10.0 * outputs["reconstruction_loss"]
    )
    local_loss.backward(retain_graph=True)
    global_side = [model.backbone, model.pool, model.whiten, model.margin]
    assert all(p.grad is None for part in global_side for p in part.parameters())
    local_side = [model.local_head, model.attention_classifier]
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for part in local_side
        for p in part.parameters()
    )

    model.zero_grad(set_to_none=True)
    F.cross_entropy(outputs["global_logits"], labels).backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for part in global_side
        for p in part.parameters()
    )
    assert all(p.grad is None for part in local_side for p in part.parameters())
