"""The value rules of the config tree: counts that may not be negative, powers and weights that may
not be negative or NaN, sizes that must be at least 1. core/config.py checks them whenever a config
is loaded, so a bad value stops a script at start-up with the key named, before anything is read or
written (a negative shortlist would otherwise slice from the end of a ranking and change the
numbers without a word).

A rule is (key, test, what is expected); ``value_problems(config)`` lists the keys that break one.
Rules about how keys relate (a checkpoint period against the epochs, say) stay with the code that
uses them.
"""

import math


def _at_least(low):
    return lambda value: value >= low, f"a whole number >= {low}"


def _non_negative_number():
    return lambda value: math.isfinite(value) and value >= 0, "a finite number >= 0"


def _all_at_least(low):
    def test(values):
        return all(isinstance(value, int) and value >= low for value in values)

    return test, f"whole numbers >= {low}"


# key -> (test, expected); the tests see values already coerced to the default's type
RULES = {
    # how many images a step keeps or re-ranks
    "SV.SHORTLIST": _at_least(0),
    "RERANK.SG_SHORTLIST": _at_least(0),
    "RERANK.SG_K": _at_least(0),
    "RERANK.QE_K": _at_least(0),
    "RERANK.DBA_K": _at_least(1),  # the image itself is counted
    "EVAL.SEARCH_TOPK": _at_least(1),
    "EVAL.KAPPAS": _all_at_least(1),
    "ASMK.MULTIPLE_ASSIGNMENT_DB": _at_least(1),
    "ASMK.MULTIPLE_ASSIGNMENT_QUERY": _at_least(1),
    # powers and weights
    "RERANK.QE_ALPHA": _non_negative_number(),
    "RERANK.DBA_ALPHA": _non_negative_number(),
    "RERANK.SG_BETA": _non_negative_number(),
    "ASMK.ALPHA": _non_negative_number(),
    "TRAIN.ETA_EXTRA_S": _non_negative_number(),
    # block sizes
    "EVAL.CHUNK_SIZE": _at_least(1),
    "RERANK.DBA_CHUNK": _at_least(1),
    "EXTRACT.SHARD_SIZE": _at_least(1),
}


def _value(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def value_problems(config):
    """One line per key of RULES whose value breaks its rule: ``config key KEY = VALUE: expected
    ...``."""
    problems = []
    for key, (test, expected) in RULES.items():
        value = _value(config, key)
        if not test(value):
            problems.append(f"config key {key} = {value!r}: expected {expected}")
    return problems
