import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, cfg, dump_cfg, load_cfg, merge_list

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = REPO.parent / "shared" / "seed" / "resnet_delg_8gpu.yaml"


def test_unknown_key_names_the_key_and_the_closest_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'MODEL.DEPHT'; did you mean MODEL.DEPTH"
    ):
        load_cfg("", ["MODEL.DEPHT", "50"])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("OPTIM:\n  BASE_LRR: 0.1\n")
    with pytest.raises(
        ConfigError,
        match=rf"{path}: unknown config key 'OPTIM.BASE_LRR'; did you mean OPTIM.BASE_LR",
    ):
        load_cfg(str(path))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("MODEL.DEPTH", "fifty", "expects int"),
        ("TRAIN.AUTO_RESUME", "maybe", "expects bool"),
        ("EXTRACT.LOCAL_SCALES", "0.5", "expects list"),
        ("OUT_DIR", "[1, 2]", None),  # a string key keeps the text as given
    ],
)
def test_values_of_the_wrong_type_name_key_type_and_value(key, value, expected):
    if expected is None:
        assert load_cfg("", [key, value]).OUT_DIR == "[1, 2]"
        return
    with pytest.raises(ConfigError, match=rf"{key} {expected}, got ") as error:
        load_cfg("", [key, value])
    assert value in str(error.value)


def test_overrides_are_converted_to_the_default_type():
    config = load_cfg(
        "", ["OPTIM.BASE_LR", "1", "TRAIN.AUTO_RESUME", "True", "EXTRACT.LOCAL_SCALES", "[0.5, 1]"]
    )
    assert config.OPTIM.BASE_LR == 1.0 and isinstance(config.OPTIM.BASE_LR, float)
    assert config.TRAIN.AUTO_RESUME is True and config.EXTRACT.LOCAL_SCALES == [0.5, 1]


def test_an_override_without_a_value_is_refused():
    with pytest.raises(ConfigError, match="'OUT_DIR' has no value"):
        merge_list(cfg.clone(), ["OUT_DIR"])


def test_defaults_are_restored_between_loads():
    load_cfg("", ["MODEL.DEPTH", "101"])
    assert load_cfg().MODEL.DEPTH == 50


@pytest.mark.parametrize(
    "preset", sorted(str(path.relative_to(REPO)) for path in (REPO / "configs").rglob("*.yaml"))
)
def test_every_preset_merges(preset):
    load_cfg(str(REPO / preset))


@pytest.mark.skipif(
    not SEED_CONFIG.is_file(), reason="../shared/seed/resnet_delg_8gpu.yaml is not present"
)
def test_the_seed_projects_own_file_merges_with_its_meanings():
    config = load_cfg(str(SEED_CONFIG))
    assert config.MODEL.HEADS.REDUCTION_DIM == 512 and config.MODEL.HEADS.MARGIN == 0.15
    assert (
        config.TRAIN.SPLIT == "train_list.txt"
        and config.OPTIM.LR_POLICY == "cos"
        and config.NUM_GPUS == 8
    )


def test_resolved_config_is_written_and_reads_back(tmp_path):
    path = dump_cfg(load_cfg("", ["MODEL.DEPTH", "101"]), str(tmp_path))
    assert load_cfg(path).MODEL.DEPTH == 101


def test_scripts_report_config_mistakes_in_one_line_without_a_traceback():
    result = subprocess.run(
        [
            sys.executable,
            "tools/revisitop/evaluate.py",
            "--cfg",
            "configs/synthetic/delg_tiny_cpu.yaml",
            "EVAL.DATASETT",
            "synth",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown config key 'EVAL.DATASETT'; did you mean EVAL.DATASET" in result.stderr
    assert "Traceback" not in result.stderr
