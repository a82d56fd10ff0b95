"""The seed project's image lists: one ``relative/path.jpg label`` per line.

Blank lines and lines starting with ``#`` are skipped. The label is the last whitespace-separated
token, so paths may contain spaces. Labels are class indices already (the seed trains on them as
they are), so the class mapping of a list dataset is the identity over 0..max label.
"""

# characters of an offending line quoted in an error (GLDv2 lines can hold thousands of ids)
_MAX_SHOWN = 200


class ParseError(ValueError):
    """A malformed line of a dataset file; the message reads ``file:line: expected ..., got
    '<text>'``."""

    def __init__(self, path, line_number, expected, text):
        self.path = str(path)
        self.line_number = line_number
        shown = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."
        super().__init__(f"{self.path}:{line_number}: {expected}, got '{shown}'")


def numbered_lines(path):
    """Yield (line number, stripped text) for the non-blank, non-comment lines of a text file."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield line_number, text


def read_image_list(path):
    """Return [(relative image path, integer label)] from a list file, in file order."""
    samples = []
    for line_number, text in numbered_lines(path):
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise ParseError(path, line_number, "expected 'relative/path.jpg label'", text)
        image_path, label = parts
        try:
            label = int(label)
        except ValueError:
            raise ParseError(
                path, line_number, "expected an integer label after the image path", text
            ) from None
        if label < 0:
            raise ParseError(path, line_number, "expected a non-negative integer label", text)
        samples.append((image_path, label))
    if not samples:
        raise ValueError(f"{path}: no images listed (expected lines 'relative/path.jpg label')")
    return samples
