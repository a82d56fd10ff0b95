"""Interoperability: the official DELF/DELG feature files, the official TensorFlow weights
(official_tf/), ONNX export of the extraction network."""
