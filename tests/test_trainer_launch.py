import os
import signal

import pytest

from core.distributed import (
    LaunchError,
    PreemptionFlag,
    ProcessPlace,
    first_slurm_host,
    place_from_environment,
    resolve_backend,
)


def test_torchrun_environment():
    environ = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    assert place_from_environment(environ, 10001) == ProcessPlace(5, 16, 1, 8, "env://")


def test_slurm_environment_is_mapped_onto_env_rendezvous():
    environ = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    place = place_from_environment(environ, 12001)
    assert place == ProcessPlace(9, 16, 1, 8, "env://")
    assert environ["MASTER_ADDR"] == "gpu07" and environ["MASTER_PORT"] == "12001"
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("9", "16", "1")


def test_single_task_or_no_launcher_means_spawn():
    assert place_from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 1) is None
    assert place_from_environment({}, 1) is None


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node17", "node17"),
        ("a1,b2", "a1"),
        ("gpu[03-05,07]", "gpu03"),
        ("gpu[7,9],cpu1", "gpu7"),
    ],
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_backend_choice():
    assert resolve_backend("auto", "cpu") == "gloo" and resolve_backend("auto", "cuda") == "nccl"
    with pytest.raises(LaunchError, match="nccl needs GPUs"):
        resolve_backend("nccl", "cpu")


def test_preemption_flag_is_set_by_sigusr1_and_handlers_are_restored():
    flag = PreemptionFlag()
    before = signal.getsignal(signal.SIGUSR1)
    with flag.installed():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.requested
    assert signal.getsignal(signal.SIGUSR1) is before


def test_cpu_processes_share_the_cores_of_their_affinity_not_of_the_machine(monkeypatch):
    """Under SLURM or taskset a process may run on fewer cores than the machine has: two CPU
    processes on a 4-core allocation of a 128-core node take 2 threads each, not 64."""
    import torch

    from core import distributed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert distributed.available_cores() == 4
    before = torch.get_num_threads()
    try:
        distributed.join_process_group(ProcessPlace(0, 1, 0, 2, ""), "gloo", "cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
