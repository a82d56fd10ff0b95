"""The console handler follows sys.stdout, so logging after the stream it started with was closed
(as pytest's capture does between tests) neither fails nor prints a 'Logging error' traceback."""

import io
import logging
import sys

from core.logging import setup_logging


def test_logging_follows_the_current_stdout(tmp_path, monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    setup_logging(str(tmp_path), is_main=True)
    first.close()
    second, errors = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", second)
    monkeypatch.setattr(sys, "stderr", errors)
    logging.getLogger("probe").info("after the first stream closed")
    logging.getLogger().handlers.clear()
    assert "after the first stream closed" in second.getvalue()
    assert "Logging error" not in errors.getvalue()
