"""A 2-process CPU DDP run (gloo) of train_delg.py on synthetic data: it trains and checkpoints,
SIGTERM makes it checkpoint and exit cleanly, and TRAIN.AUTO_RESUME continues from there (with a
changed training length)."""

import os
import signal
import socket
import subprocess
import sys
import time

from core.checkpoint import list_checkpoints, read_training_checkpoint
from core.logging import JSON_LOG_NAME, read_json_log
from tests.tiny import REPO, TINY_PRESET, generate_tiny_world, tiny_training_options


def tiny_opts(data_root, out_dir, *extra):
    """Validation every epoch, so the resumed run's last iteration (an epoch end) validates."""
    return tiny_training_options(data_root, out_dir, "TRAIN.EVAL_PERIOD", "1", *extra)


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return str(sock.getsockname()[1])


def launch(opts):
    command = [
        sys.executable,
        "train_delg.py",
        "--cfg",
        TINY_PRESET,
        "NUM_GPUS",
        "2",
        "PORT",
        free_port(),
        *opts,
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RANK", "WORLD_SIZE", "SLURM_NTASKS")
    }
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def logged_iterations(out_dir):
    path = out_dir / JSON_LOG_NAME
    if not path.exists():
        return []
    return [r["iter"] for r in read_json_log(str(path)) if r["type"] == "train_iter"]


def wait_for_iteration(process, out_dir, iteration, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if max(logged_iterations(out_dir), default=0) >= iteration:
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(
        f"the run did not reach iteration {iteration}:\n{process.communicate()[0][-3000:]}"
    )


def test_two_processes_train_checkpoint_stop_on_sigterm_and_resume(tmp_path):
    data_root, out_dir = generate_tiny_world(tmp_path) / "train", tmp_path / "run"

    first = launch(
        tiny_opts(data_root, out_dir, "OPTIM.MAX_ITER", "1000", "TRAIN.CHECKPOINT_ITERS", "3")
    )
    wait_for_iteration(first, out_dir, 5)
    # to the launcher, which forwards it to both training processes
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output[-3000:]
    assert "received SIGTERM: checkpointing at the next iteration boundary" in output
    saved = [it for it, _ in list_checkpoints(str(out_dir))]
    stopped_at = saved[-1]
    assert stopped_at >= 5 and len(saved) == 3, saved  # TRAIN.KEEP_CHECKPOINTS 3 (the default)
    # every 3 iterations and every epoch (4)
    assert all(it % 3 == 0 or it % 4 == 0 for it in saved[:-1]), saved
    state = read_training_checkpoint(list_checkpoints(str(out_dir))[-1][1])
    assert len(state["rng"]) == 2  # one RNG state per process
    # stopped at the boundary right after the signal
    assert max(logged_iterations(out_dir)) == stopped_at

    second = launch(
        tiny_opts(
            data_root,
            out_dir,
            "OPTIM.MAX_ITER",
            str(stopped_at + 3),
            "TRAIN.CHECKPOINT_ITERS",
            "3",
            "TRAIN.AUTO_RESUME",
            "True",
        )
    )
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output[-3000:]
    assert f"resumed from {out_dir}/checkpoints/checkpoint_{stopped_at:09d}.pth" in output
    assert f"config changed since the checkpoint: OPTIM.MAX_ITER 1000 -> {stopped_at + 3}" in output
    assert logged_iterations(out_dir)[-3:] == [stopped_at + 1, stopped_at + 2, stopped_at + 3]
    assert list_checkpoints(str(out_dir))[-1][0] == stopped_at + 3
    validations = [r for r in read_json_log(str(out_dir / JSON_LOG_NAME)) if r["type"] == "val"]
    assert validations and validations[-1]["iter"] == stopped_at + 3
    assert 0.0 <= validations[-1]["global_top1_err"] <= 100.0
