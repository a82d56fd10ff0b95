"""configs/official/*.yaml hold what tools/convert_official.py writes for each released model:
full-size TF1/slim archives of both depths (random values, the releases' shapes) are converted under
each release's name and the written values compared with the preset."""

import pytest
import yaml

from core.config import load_cfg
from tests import tf_archives
from tests.tiny import REPO

tf = tf_archives.tensorflow_or_skip()

FULL_HEADS = {"reduction": 2048, "attention": 512, "descriptor": 128}


@pytest.mark.parametrize("depth", [50, 101])
def test_presets_equal_the_converter_output(tmp_path, depth):
    from tools.interop.official_tf.convert import LAYOUTS, convert_archive
    from tools.interop.official_tf.official_yaml import official_yaml

    variables = tf_archives.slim_variables(depth=depth, width=64, heads=FULL_HEADS)
    prefix = tf_archives.save_checkpoint(str(tmp_path / "model.ckpt"), variables)
    del variables
    for data in ("gld_20200814", "gldv2clean_20200914"):
        release = f"r{depth}delg_{data}"
        converted = convert_archive(prefix, release)
        written = yaml.safe_load(
            official_yaml(converted.settings, converted.release, LAYOUTS[converted.layout])
        )
        preset = REPO / "configs" / "official" / f"{release}.yaml"
        assert yaml.safe_load(preset.read_text()) == written, release
        cfg = load_cfg(str(preset))  # merges into the defaults: every key exists
        assert cfg.RESNET.STEM == "slim" and cfg.MODEL.DEPTH == depth
