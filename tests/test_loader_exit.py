"""A process whose training loop fails exits: its DataLoader workers ignore SIGTERM (preemption
signals are for the main process), so the SIGTERM multiprocessing sends its daemonic children at
exit used to leave the process waiting for them forever when the error kept the loader alive."""

import subprocess
import sys
import textwrap

from tests.tiny import REPO

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch.utils.data import DataLoader
    from datasets.loader import init_worker

    loader = DataLoader(list(range(64)), batch_size=4, num_workers=2, worker_init_fn=init_worker,
                        persistent_workers=True)

    def loop():
        for batch in loader:
            try:
                raise RuntimeError("a step that fails")
            except RuntimeError as error:  # a cycle through the frame keeps the iterator alive
                raise error

    loop()
    """
)


def test_a_failing_loop_with_loader_workers_exits():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith("RuntimeError: a step that fails")
