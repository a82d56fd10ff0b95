"""Interoperability: the official DELF/DELG feature files, ONNX export of the extraction network."""
