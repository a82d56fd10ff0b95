"""The loss as a table of terms (modeling/losses.py): the DELG loss is bit-identical to its
hand-written sum, and a term registered in this file is summed, logged and trained by the real
training step."""


import pytest
import torch
import torch.nn.functional as F

from core.config import ConfigError
from core.step import train_step
from modeling import build_loss, build_model
from modeling.losses import DelgLoss, loss_weights, register_loss_term
from modeling.registry import LOSS_TERMS
from tests.small_models import cpu_step_run, tiny_cfg

WEIGHTS = ("MODEL.LOSSES.GLOBAL_WEIGHT", "0.7", "MODEL.LOSSES.ATTENTION_WEIGHT", "1.3")


def _outputs(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 48, 48, generator=generator)
    labels = torch.tensor([0, 1, 2, 3])
    return model, model(images, labels), labels


def test_the_delg_loss_is_bit_identical_to_the_hand_written_sum():
    cfg = tiny_cfg(*WEIGHTS)
    _, outputs, labels = _outputs(cfg)
    global_ce = F.cross_entropy(outputs["global_logits"].float(), labels)
    attention_ce = F.cross_entropy(outputs["attention_logits"].float(), labels)
    reconstruction = outputs["reconstruction_loss"].float()
    expected = 0.7 * global_ce + 1.3 * attention_ce + 10.0 * reconstruction
    total, parts = build_loss(cfg)(outputs, labels)
    assert torch.equal(total, expected)
    assert list(parts) == ["global", "attention", "reconstruction"]
    assert torch.equal(parts["global"], global_ce) and torch.equal(parts["attention"], attention_ce)
    assert torch.equal(parts["reconstruction"], reconstruction)


@pytest.fixture
def toy_term():
    """A term on the embedding's squared norm, registered here and forgotten afterwards."""

    @register_loss_term("toy", "TOY_WEIGHT", default_weight=2.0)
    def toy(outputs, labels):
        return outputs["embedding"].float().pow(2).mean()

    yield toy
    LOSS_TERMS.remove("toy")


def test_a_registered_term_is_summed_with_its_weight(toy_term):
    cfg = tiny_cfg(*WEIGHTS)
    _, outputs, labels = _outputs(cfg)
    assert loss_weights(cfg)["toy"] == 2.0  # its default: the config has no TOY_WEIGHT
    total, parts = build_loss(cfg)(outputs, labels)
    without = DelgLoss({**loss_weights(cfg), "toy": 0.0})(outputs, labels)[0]
    assert torch.equal(parts["toy"], toy_term(outputs, labels).detach())
    assert total.item() == pytest.approx(without.item() + 2.0 * parts["toy"].item(), rel=1e-6)


def test_the_training_step_trains_a_registered_term(toy_term):
    """Only the toy term weighted: the step moves the whitening FC (the embedding's parameter) and
    leaves the margin head, which the toy term does not reach, where it was."""
    cfg = tiny_cfg()
    model, _, _ = _outputs(cfg)
    weights = {name: 0.0 for name in loss_weights(cfg)} | {"toy": 1.0}
    run = cpu_step_run(model, DelgLoss(weights), torch.optim.SGD(model.parameters(), lr=0.5))
    whiten, margin = model.whiten.weight.detach().clone(), model.margin.weight.detach().clone()
    stats = train_step(run, torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 3]), 0)
    assert stats["loss_toy"] > 0 and stats["loss"] == pytest.approx(stats["loss_toy"], rel=1e-5)
    assert not torch.equal(model.whiten.weight, whiten)
    assert torch.equal(model.margin.weight, margin)


def test_a_term_without_a_weight_names_the_missing_key():
    register_loss_term("weightless", "WEIGHTLESS_WEIGHT")(lambda outputs, labels: 0.0)
    try:
        with pytest.raises(ConfigError, match="MODEL.LOSSES.WEIGHTLESS_WEIGHT"):
            build_loss(tiny_cfg())
    finally:
        LOSS_TERMS.remove("weightless")
