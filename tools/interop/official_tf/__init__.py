"""The official DELG TensorFlow archives -> our checkpoint and config (tools/convert_official.py).

savedmodel.py reads the variables and the graph facts (TensorFlow imported lazily, only here);
weights_tf.py maps TF2/Keras names (and the folds), weights_slim.py TF1/tf-slim names and the head
rule; convert.py derives the architecture from the shapes and checks it against the model;
official_yaml.py writes the config. The training core does not import this package: it loads the
converted .pth like any checkpoint.
"""
