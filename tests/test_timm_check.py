"""tools/timm_check.py: which timm models work as DELG's backbone, one line each."""

import pytest

pytest.importorskip("timm", reason="timm (requirements.txt)")

from tools import timm_check  # noqa: E402

SMALL_RESNET = ["TIMM.KWARGS", "['channels=(8,16,32,64)']"]


def test_a_working_model_gets_its_maps_and_a_fixed_size_one_its_reason(capsys):
    assert timm_check.main(["resnet10t", *SMALL_RESNET]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "works: 1/1"
    assert lines[0].split()[0] == "resnet10t"
    assert "ok: TimmCNN, crop to x1, local 32ch/16 global 64ch/32, field 103 px" in lines[0]

    beit = ["TIMM.KWARGS", "['depth=1', 'embed_dim=32', 'num_heads=1']"]
    assert timm_check.main(["beit_base_patch16_224", *beit]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "works: 0/1"
    assert "refused: TIMM.NAME 'beit_base_patch16_224' does not run at every input size" in lines[0]


def test_arguments_split_at_the_first_key_and_patterns_expand():
    names, cfg_file, opts = timm_check.split_arguments(
        ["resnet50", "levit_128*", "--cfg", "a.yaml", "TIMM.LOCAL_STRIDE", "8"]
    )
    assert (names, cfg_file, opts) == (
        ["resnet50", "levit_128*"],
        "a.yaml",
        ["TIMM.LOCAL_STRIDE", "8"],
    )
    models = timm_check.expand(names)
    assert models[0] == "resnet50" and {"levit_128", "levit_128s"} <= set(models[1:])
    assert all(name.startswith("levit_128") for name in models[1:])


def test_mistakes_are_one_line(capsys):
    assert timm_check.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "timm_check error: name at least one timm model, e.g. resnet50 'convnext*'"
    )
    assert timm_check.main(["no_such_model*"]) == 2
    assert "'no_such_model*' matches no timm model" in capsys.readouterr().err
