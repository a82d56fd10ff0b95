"""What carries over from one run of the demo to the next: how a run that is stopped ends, and the
seconds of the runs that were stopped.

SIGTERM or SIGUSR1 (a scheduler's preemption, ``kill``) during the training makes the trainer
checkpoint first; at any other step the step is simply left (its outputs are rebuilt from what the
earlier steps kept). Either way the demo prints one line saying that the same command continues,
and exits with EXIT_PREEMPTED. Each stopped run adds its wall and CPU seconds to
OUT/interrupted_runs.json; the run that finishes adds them to its own in the closing ``time:`` line
and summary.json, then removes the file.
"""

import contextlib
import os
import signal

from core.io import read_json, write_json

# stopped by a signal after saving what it had: run the same command again (sysexits EX_TEMPFAIL)
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LEDGER = "interrupted_runs.json"
CONTINUE = "run the same command again to continue"


class DemoStopped(Exception):
    """The demo stops before its end: ``message`` (empty: already reported) and the exit code."""

    def __init__(self, message, code=EXIT_PREEMPTED):
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def stop_on_signals(current_step):
    """Outside the training (which installs its own handler and checkpoints), a preemption signal
    raises DemoStopped naming current_step()."""

    def handle(signum, _frame):
        name = signal.Signals(signum).name
        raise DemoStopped(f"stopped by {name} during {current_step()}: {CONTINUE}")

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def earlier_runs(out_dir):
    """[{"wall_s", "cpu_s"}] of the runs stopped since the last finished one."""
    path = os.path.join(out_dir, LEDGER)
    return read_json(path)["runs"] if os.path.isfile(path) else []


def record_stopped_run(out_dir, totals):
    """Add a stopped run's seconds to the ledger."""
    runs = earlier_runs(out_dir) + [{"wall_s": totals["wall_s"], "cpu_s": totals["cpu_s"]}]
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, LEDGER), {"runs": runs})


def all_runs_timing(out_dir, totals):
    """This run's totals with the stopped runs' seconds added: wall_s and cpu_s of all runs,
    ``runs`` (how many), ``this_run`` (this run's own seconds) and ``steps`` (this run's)."""
    runs = earlier_runs(out_dir)
    return {
        "wall_s": totals["wall_s"] + sum(run["wall_s"] for run in runs),
        "cpu_s": totals["cpu_s"] + sum(run["cpu_s"] for run in runs),
        "runs": len(runs) + 1,
        "this_run": {"wall_s": totals["wall_s"], "cpu_s": totals["cpu_s"]},
        "steps": totals["steps"],
    }


def forget_stopped_runs(out_dir):
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out_dir, LEDGER))
