"""The revisitop Easy / Medium / Hard protocols: which images count as positives and which are
ignored.

This is the one place the three definitions live (revisitop's example_evaluate.py):
    Easy:   positives = easy,          ignored = junk + hard
    Medium: positives = easy + hard,   ignored = junk
    Hard:   positives = hard,          ignored = junk + easy
"""

import numpy as np

PROTOCOLS = ("E", "M", "H")
_DEFINITIONS = {
    "E": (("easy",), ("junk", "hard")),
    "M": (("easy", "hard"), ("junk",)),
    "H": (("hard",), ("junk", "easy")),
}


def _indices(entry, key, query):
    if key not in entry:
        raise KeyError(
            f"ground truth of query {query} has no {key!r} list (expected keys easy, hard, junk)"
        )
    return np.asarray(entry[key], dtype=np.int64).reshape(-1)


def protocol_gnd(gnd_raw, protocol):
    """One protocol's ground truth: a list (one per query) of {"ok": int64 array, "junk": int64
    array}."""
    if protocol not in _DEFINITIONS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    ok_keys, junk_keys = _DEFINITIONS[protocol]
    lists = []
    for query, entry in enumerate(gnd_raw):
        ok = np.concatenate([_indices(entry, key, query) for key in ok_keys])
        junk = np.concatenate([_indices(entry, key, query) for key in junk_keys])
        lists.append({"ok": ok, "junk": junk})
    return lists


def protocol_gnds(gnd_raw):
    """All three protocols: {"E": gnd list, "M": gnd list, "H": gnd list}."""
    return {protocol: protocol_gnd(gnd_raw, protocol) for protocol in PROTOCOLS}
