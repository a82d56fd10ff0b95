"""OUT_DIR/results.json of the evaluation: checked before the work, merged per method after it.

    earlier = prepare_results(cfg)  # OUT_DIR writable, an earlier results.json readable
    ...  # the methods run
    write_results(cfg, earlier, results, runs)

A second evaluation into the same OUT_DIR merges per method: the methods it ran replace their rows
(and their ``runs`` entries), the earlier file's other methods are kept, and one printed line says
which were replaced and which kept. Each ``runs`` entry records the dataset and the features folder
it was evaluated on, so rows kept from another evaluation say where they came from. A results.json
that is not an evaluation's (not JSON, or not ``{method: {protocol: {metric: value}}}``) is refused
before any work, naming the file; so is an OUT_DIR that cannot be written (read-only, a file).
"""

import json
import os

from core.io import check_writable, read_json, write_json
from tools.extraction.stores import features_dir

RESULTS_FILE = "results.json"
RUNS = "runs"


def results_path(cfg):
    return os.path.join(cfg.OUT_DIR, RESULTS_FILE)


def prepare_results(cfg):
    """Check that OUT_DIR takes files and return the earlier results.json's dict ({} if none);
    raise ValueError naming the file when it is not an evaluation's results."""
    check_writable(cfg.OUT_DIR)
    path = results_path(cfg)
    if not os.path.isfile(path):
        return {}
    try:
        earlier = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not JSON ({error}); {_REMEDY}") from None
    if not _is_results(earlier):
        raise ValueError(
            f"{path}: not an evaluation's results (expected {{method: {{protocol: {{metric: "
            f"value}}}}, 'runs': {{...}}}}); {_REMEDY}"
        )
    return earlier


_REMEDY = "move it away or choose another OUT_DIR (a second evaluation merges into it)"


def _is_results(value):
    if not isinstance(value, dict):
        return False
    return all(isinstance(rows, dict) for rows in value.values())


def write_results(cfg, earlier, results, runs):
    """Write results (this run's {method: rows}) and runs ({method: timings and settings}) merged
    into the earlier file's dict; print one line when earlier rows were replaced or kept."""
    evaluated = {"dataset": cfg.EVAL.DATASET, "features_dir": os.path.abspath(features_dir(cfg))}
    runs = {method: {**entry, **evaluated} for method, entry in runs.items()}
    earlier_runs = earlier.get(RUNS, {})
    kept = [method for method in earlier if method != RUNS and method not in results]
    replaced = [method for method in earlier if method != RUNS and method in results]
    merged = {method: earlier[method] for method in kept}
    merged.update(results)
    merged_runs = {m: earlier_runs[m] for m in kept if m in earlier_runs}
    merged_runs.update(runs)
    path = results_path(cfg)
    write_json(path, {**merged, RUNS: merged_runs})
    if kept or replaced:
        print(
            f"{path}: merged with an earlier evaluation; replaced: {', '.join(replaced) or 'none'}"
            f"; kept: {', '.join(kept) or 'none'}",
            flush=True,
        )
