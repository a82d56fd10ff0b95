"""Reading the framework's YAML files: safe loading, and a key given twice in one mapping is an
error naming the file and both lines (plain YAML keeps the last value without a word)."""

import yaml


class YamlFileError(ValueError):
    """A YAML file that does not parse or repeats a key; the message gives file:line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (merge keys ``<<`` may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise YamlFileError(
                    f"{key_node.start_mark.name}:{line}: key {key!r} given twice (first at line "
                    f"{first_line[key]}); remove one of them"
                )
            first_line[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path):
    """The parsed content of the YAML file at path (None when empty)."""
    with open(path) as handle:
        try:
            return yaml.load(handle, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
        except yaml.YAMLError as error:
            raise YamlFileError(f"{path}: not valid YAML: {error}") from None
