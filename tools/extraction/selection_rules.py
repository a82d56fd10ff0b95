"""The selection rules (``EXTRACT.SELECTION``): importing this module registers every rule.

A new rule is a module with a SelectionRule subclass (tools/extraction/selection.py) decorated with
``@SELECTION_RULES.register("name")``, plus one import line below. Its keys are recorded in every
store's provenance and count as local-only there (tools/extraction/provenance.py).
"""

from tools.extraction import selection_official  # noqa: F401  (registers "official")
from tools.extraction.selection import SELECTION_RULES

DEFAULT_RULE = "official"


def selection_rule(name):
    """The registered rule called name (a SelectionRule instance); a ConfigError names
    EXTRACT.SELECTION and the known rules when there is none."""
    return SELECTION_RULES.get(name)()


def rule_keys():
    """Every EXTRACT key some registered rule reads, in registration order."""
    keys = {}
    for _, rule in SELECTION_RULES.entries():
        keys.update(dict.fromkeys(rule.keys))
    return tuple(keys)
