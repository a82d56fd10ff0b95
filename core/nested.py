"""Nested dicts (configs, provenance records, checkpoint configs) as flat dotted keys."""


def flatten(node, prefix="", keep_empty=True):
    """{"a": {"b": 1}, "c": (2, 3)} -> {"a.b": 1, "c": [2, 3]}. With keep_empty an empty dict is a
    value of its own (an empty section differs from an absent one), else it gives no key; tuples
    become lists, as YAML reads them."""
    flat = {}
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and (value or not keep_empty):
            flat.update(flatten(value, path, keep_empty))
        else:
            flat[path] = list(value) if isinstance(value, tuple) else value
    return flat
