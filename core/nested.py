"""Nested dicts (configs, provenance records, checkpoint configs) as flat dotted keys."""


def flatten(node, prefix=""):
    """{"a": {"b": 1}, "c": (2, 3)} -> {"a.b": 1, "c": [2, 3]}. An empty dict is a value of its own
    (so that an empty section differs from an absent one); tuples become lists, as YAML reads them.
    """
    flat = {}
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path))
        else:
            flat[path] = list(value) if isinstance(value, tuple) else value
    return flat
