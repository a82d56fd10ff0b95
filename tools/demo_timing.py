"""The wall and CPU seconds of the demo's steps (tools/pipeline.py): each logged as it ends, and the
totals of the run (summary.json's ``timing``, with tools/demo_runs.py adding stopped runs)."""

import resource
import time


def cpu_seconds():
    """CPU time of this process and of its children that ended (loader workers, generator pool),
    user + system."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class StepTimer:
    """Wall and CPU seconds of each step, logged as the step ends."""

    def __init__(self, log):
        self.log = log
        self.steps = {}
        self.current = "the start"  # the step running now
        self.start_wall = time.perf_counter()
        self.start_cpu = cpu_seconds()

    def run(self, name, function, *args, **kwargs):
        wall, cpu = time.perf_counter(), cpu_seconds()
        self.current = name
        result = function(*args, **kwargs)
        self.steps[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
        self.log(
            f"[demo] {name}: {self.steps[name]['wall_s']:.1f} s wall, "
            f"{self.steps[name]['cpu_s']:.1f} s CPU"
        )
        return result

    def totals(self):
        return {
            "wall_s": time.perf_counter() - self.start_wall,
            "cpu_s": cpu_seconds() - self.start_cpu,
            "steps": self.steps,
        }
