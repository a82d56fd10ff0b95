"""Process groups for the three ways a training run starts, and the rank helpers the trainer uses.

- spawn: ``python train_delg.py ... NUM_GPUS N`` starts N processes on this machine (rendezvous on
  HOST:PORT); without GPUs they are N CPU processes, which is how the tests run DDP.
- torchrun (or any env:// launcher): one process per GPU on any number of nodes; RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT come from the environment.
- SLURM: ``srun`` with one task per GPU; SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID are mapped onto
  the same, and MASTER_ADDR defaults to the first host of SLURM_JOB_NODELIST.

The launcher forwards SIGTERM and SIGUSR1 to spawned processes so that a preempted run checkpoints
and exits.
"""

import contextlib
import logging
import os
import re
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_LOCAL_RANK = 0
logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The launch environment cannot start the requested run; the message says which setting to
    change."""


@dataclass(frozen=True)
class ProcessPlace:
    """Where one training process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    init_method: str  # "" when there is a single process and no process group


def available_cores():
    """The CPU cores this process may run on: its affinity mask where the system has one (under
    SLURM, taskset or a container's cpuset it is smaller than the machine), else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_device(device):
    """DEVICE (or EVAL.DEVICE) 'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cpu', 'cuda',
    'cuda:N' and torch.device objects are checked (a GPU must be visible) and returned as a string.
    The one device check of training, extraction, search and evaluation."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cuda", "cpu"):
        raise LaunchError(f"DEVICE must be auto, cuda or cpu, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LaunchError(
            f"DEVICE {device} was asked for but no GPU is visible; use DEVICE cpu or auto"
        )
    return device


def resolve_backend(backend, device):
    """DIST_BACKEND 'auto' -> nccl on GPU, gloo on CPU."""
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise LaunchError(f"DIST_BACKEND must be auto, nccl or gloo, got {backend!r}")
    if backend == "nccl" and device != "cuda":
        raise LaunchError("DIST_BACKEND nccl needs GPUs; use gloo (or auto) for CPU runs")
    return backend


def first_slurm_host(nodelist):
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise LaunchError(f"cannot read SLURM_JOB_NODELIST {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def place_from_environment(environ, default_port):
    """The process's place under torchrun or srun, or None when neither launched it (then we
    spawn)."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        world = int(environ["WORLD_SIZE"])
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
        return ProcessPlace(
            int(environ["RANK"]), world, int(environ.get("LOCAL_RANK", 0)), local_world, "env://"
        )
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        environ.setdefault(
            "MASTER_ADDR", first_slurm_host(environ.get("SLURM_JOB_NODELIST", "localhost"))
        )
        environ.setdefault("MASTER_PORT", str(default_port))
        world = int(environ["SLURM_NTASKS"])
        local_world = int(environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        environ.update(
            RANK=environ["SLURM_PROCID"], WORLD_SIZE=str(world), LOCAL_RANK=environ["SLURM_LOCALID"]
        )
        return ProcessPlace(
            int(environ["SLURM_PROCID"]),
            world,
            int(environ["SLURM_LOCALID"]),
            local_world,
            "env://",
        )
    return None


def launch(fn, args, num_procs, host, port, backend="auto", device="auto"):
    """Run ``fn(*args)`` in every training process of the job and return the job's exit code.

    fn must be a module-level function (spawned processes import it). Under torchrun or srun this
    process is one of the job's processes and runs fn itself; otherwise NUM_GPUS (num_procs)
    processes are spawned here.
    """
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    place = place_from_environment(os.environ, port)
    if place is not None:
        return _run_in_process(place, backend, device, fn, args)
    if num_procs < 1:
        raise LaunchError(f"NUM_GPUS must be at least 1, got {num_procs}")
    if device == "cuda" and num_procs > torch.cuda.device_count():
        raise LaunchError(
            f"NUM_GPUS {num_procs} but only {torch.cuda.device_count()} GPUs are visible"
        )
    if num_procs == 1:
        return _run_in_process(ProcessPlace(0, 1, 0, 1, ""), backend, device, fn, args)
    return _spawn(num_procs, f"tcp://{host}:{port}", backend, device, fn, args)


def _spawn(num_procs, init_method, backend, device, fn, args):
    context = mp.start_processes(
        _spawned_entry,
        args=(num_procs, init_method, backend, device, fn, args),
        nprocs=num_procs,
        join=False,
        start_method="spawn",
    )

    def forward_signal(signum, _frame):
        for process in context.processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward_signal) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        return error.exit_code if error.exit_code and error.exit_code > 0 else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _spawned_entry(local_rank, num_procs, init_method, backend, device, fn, args):
    place = ProcessPlace(local_rank, num_procs, local_rank, num_procs, init_method)
    code = _run_in_process(place, backend, device, fn, args)
    if code:
        raise SystemExit(code)


def join_process_group(place, backend, device, timeout=None):
    """Put this process on its device and, when the job has several processes, join their group
    (once). The one join of training (launch) and extraction (tools/extraction/runner.py)."""
    global _LOCAL_RANK
    _LOCAL_RANK = place.local_rank
    if device == "cuda":
        torch.cuda.set_device(place.local_rank)
    elif place.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # CPU processes on one machine share its cores; unchecked, each would start one thread per
        # core.
        torch.set_num_threads(max(1, available_cores() // place.local_world_size))
    if place.world_size > 1 and not dist.is_initialized():
        options = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(
            backend,
            init_method=place.init_method,
            rank=place.rank,
            world_size=place.world_size,
            **options,
        )


def _run_in_process(place, backend, device, fn, args):
    join_process_group(place, backend, device)
    try:
        return fn(*args) or 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------- preemption
class PreemptionFlag:
    """Set by SIGTERM / SIGUSR1; the loop checks it at iteration boundaries (a handler must not
    checkpoint)."""

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, _frame):
        self.requested = True
        logger.warning(
            "received %s: checkpointing at the next iteration boundary", signal.Signals(signum).name
        )


# ------------------------------------------------------------------------------------- rank helpers
def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def get_local_rank():
    return _LOCAL_RANK


def is_main_process():
    return get_rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum a tensor over all processes (in place) and return it; a no-op for a single process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_dict(values, device):
    """{name: float} of named scalars (numbers or 0-dim tensors) summed over all processes, in one
    all-reduce: stacked in sorted key order (the same on every process), reduced, zipped back; the
    result keeps the order of ``values``."""
    names = sorted(values)
    stacked = torch.stack(
        [torch.as_tensor(values[name], dtype=torch.float32, device=device) for name in names]
    )
    summed = dict(zip(names, all_reduce_sum(stacked).tolist()))
    return {name: summed[name] for name in values}


def all_gather_objects(obj):
    """List of obj from every process, in rank order."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
