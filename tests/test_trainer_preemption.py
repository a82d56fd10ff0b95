"""A preemption signal to the whole process group while validation's loader workers run: one log
line (the workers ignore it), a checkpoint after the next step, and a clean resume."""

import json
import signal
import subprocess
import sys

from core import trainer
from core.checkpoint import list_checkpoints
from core.config import load_cfg
from core.logging import JSON_LOG_NAME, read_json_log
from tests.tiny import REPO, TINY_PRESET, generate_tiny_world, tiny_training_options

# Runs the trainer in its own session (so that the signal reaches only its process group) and sends
# SIGUSR1 to the group from inside the first validation batch, while the loader workers are alive.
DRIVER = """
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from core import trainer
from core.config import load_cfg
from core.meters import ErrorCounter

real_add = ErrorCounter.add
sent = []

def add_and_signal(self, *args, **kwargs):
    if not sent:
        sent.append(True)
        os.killpg(os.getpgrp(), signal.SIGUSR1)
        time.sleep(1.0)  # time for any process of the group to log it
    return real_add(self, *args, **kwargs)

ErrorCounter.add = add_and_signal
opts = json.loads(sys.argv[3])
sys.exit(trainer.train_in_process(load_cfg(sys.argv[2], opts).dump()))
"""


def test_a_signal_during_validation_is_logged_once_checkpointed_and_resumed(tmp_path):
    data_root = generate_tiny_world(tmp_path) / "train"
    out_dir = tmp_path / "run"
    opts = tiny_training_options(
        data_root,
        out_dir,
        "LOG_DEST",
        "file",
        "OPTIM.MAX_ITER",
        "6",
        "TRAIN.EVAL_PERIOD",
        "1",
        "DATA_LOADER.NUM_WORKERS",
        "2",
    )
    command = [sys.executable, "-c", DRIVER, str(REPO), TINY_PRESET, json.dumps(opts)]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, start_new_session=True
    )
    log = (out_dir / "stdout.log").read_text()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + log[-2000:]

    assert log.count(f"received {signal.SIGUSR1.name}") == 1, log
    records = read_json_log(str(out_dir / JSON_LOG_NAME))
    validated_at = [record["iter"] for record in records if record["type"] == "val"]
    assert len(validated_at) == 1  # the run stopped right after its first validation
    newest = list_checkpoints(str(out_dir))[-1][0]
    assert newest == validated_at[0] + 1  # the step after validation saw the flag
    assert "preempted: stopped at global iteration" in log

    again = [*opts, "TRAIN.AUTO_RESUME", "True", "DATA_LOADER.NUM_WORKERS", "0"]
    assert trainer.train_in_process(load_cfg(TINY_PRESET, again).dump()) == 0
    log = (out_dir / "stdout.log").read_text()
    assert f"global iteration {newest}" in log.split("resumed from")[-1].splitlines()[0]
    assert list_checkpoints(str(out_dir))[-1][0] == 6
    iterations = [r["iter"] for r in read_json_log(str(out_dir / JSON_LOG_NAME))]
    assert max(iterations) == 6
