"""Reading an official DELG TensorFlow export: its variables and what its graph says.

TensorFlow is an optional dependency (requirements-convert.txt), imported only here and only when a
conversion runs. Variables are read with TensorFlow's own checkpoint reader; the graph
(``saved_model.pb``) with TensorFlow's protobuf classes. Two facts come from a TF1 graph only:
- which tensor the attention network's first conv reads: the first convolution found walking up
  from its input is the decoder's (``decoder``) or a ResNet block's (``block3``);
- which resize op the pyramid uses: ``ResizeBilinear`` with half_pixel_centers (``bilinear``, as
  TF2's tf.image.resize) or without (``bilinear_legacy``, TF1's resize_bilinear).
"""

import os
from collections import deque

VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_PASS_THROUGH = {"Identity", "ReadVariableOp", "Enter", "Switch", "RefIdentity", "Cast"}
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}


class ConversionError(ValueError):
    """An archive that cannot be converted; the message names the file or variable and why."""


def preload_torchvision():
    """Import torchvision's models before TensorFlow: importing them after TensorFlow 2.21 crashes
    the process (segmentation fault) with torch 2.14 / torchvision 0.29."""
    try:
        import torchvision.models  # noqa: F401
    except ImportError:
        pass


def import_tensorflow():
    """The tensorflow module, or a ConversionError saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    preload_torchvision()
    try:
        import tensorflow as tf
    except ImportError:
        raise ConversionError(
            "TensorFlow is needed to read official weights: pip install -r requirements-convert.txt"
        ) from None
    return tf


def checkpoint_prefix(path):
    """(checkpoint prefix, graph file or None) of a SavedModel folder, a training-checkpoint folder
    or a checkpoint prefix."""
    if os.path.isdir(path):
        saved_model = os.path.join(path, "saved_model.pb")
        prefix = os.path.join(path, "variables", "variables")
        if os.path.isfile(saved_model):
            if not os.path.isfile(prefix + ".index"):
                raise ConversionError(f"{path}: a SavedModel without variables/variables.index")
            return prefix, saved_model
        tf = import_tensorflow()
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest, None
        raise ConversionError(f"{path}: neither a SavedModel (saved_model.pb) nor a checkpoint")
    if os.path.isfile(path + ".index"):
        return path, None
    raise ConversionError(f"{path}: no such SavedModel folder or checkpoint")


def read_variables(prefix):
    """{name: numpy array} of every variable in the checkpoint at prefix (object-graph metadata
    left out); names lose the TF2 ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix."""
    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
    except Exception as error:
        raise ConversionError(
            f"{prefix}: unreadable TensorFlow checkpoint ({_first_line(error)})"
        ) from None
    values = {}
    for name in names:
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        try:
            value = reader.get_tensor(name)
        except Exception as error:  # truncated or corrupt data file
            raise ConversionError(
                f"{prefix}: variable {name} cannot be read, the variables file is truncated or "
                f"corrupt ({_first_line(error)})"
            ) from None
        values[name.removesuffix(VARIABLE_SUFFIX)] = value
    return values


def _first_line(error):
    return str(error).strip().split("\n")[0][:200]


def read_graph(path):
    """The GraphDef of the SavedModel's first meta graph, with its function library's nodes."""
    import_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as handle:
            model.ParseFromString(handle.read())
    except Exception as error:
        raise ConversionError(f"{path}: not a SavedModel protobuf ({_first_line(error)})") from None
    if not model.meta_graphs:
        raise ConversionError(f"{path}: a SavedModel without a graph")
    return model.meta_graphs[0].graph_def


def _nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _input_name(name):
    return name.lstrip("^").split(":")[0]


def _variable_of(nodes, name):
    """The variable name behind a tensor name, through reads and identities, or None."""
    seen = set()
    while name in nodes and name not in seen:
        seen.add(name)
        node = nodes[name]
        if node.op in _VARIABLE_OPS:
            shared = node.attr["shared_name"].s.decode() if "shared_name" in node.attr else ""
            return shared or node.name
        if node.op not in _PASS_THROUGH or not node.input:
            return None
        name = _input_name(node.input[0])
    return None


def attention_input(graph_def, attention_kernel, decoder_kernel):
    """decoder or block3: what the conv reading attention_kernel sees; None when the graph has no
    such conv (a graph that computes in functions, or no graph)."""
    nodes = {node.name: node for node in graph_def.node}
    convs = [
        node
        for node in nodes.values()
        if node.op == "Conv2D"
        and _variable_of(nodes, _input_name(node.input[1])) == attention_kernel
    ]
    if not convs:
        return None
    queue, seen = deque([_input_name(convs[0].input[0])]), set()
    while queue:
        name = queue.popleft()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        if node.op == "Conv2D":
            kernel = _variable_of(nodes, _input_name(node.input[1]))
            return "decoder" if kernel == decoder_kernel else "block3"
        queue.extend(_input_name(item) for item in node.input if not item.startswith("^"))
    return None


def resize_variant(graph_def):
    """(EXTRACT.RESIZE value, description) of the graph's bilinear resize ops, or (None, why)."""
    found = set()
    for node in _nodes(graph_def):
        if node.op == "ResizeBilinear":
            found.add((node.attr["align_corners"].b, node.attr["half_pixel_centers"].b))
        elif node.op == "ScaleAndTranslate":
            found.add(("antialias", None))
    if not found:
        return None, "no bilinear resize op in the graph"
    if len(found) > 1:
        raise ConversionError(f"the graph resizes in more than one way: {sorted(found, key=str)}")
    align_corners, half_pixel = found.pop()
    if align_corners == "antialias":
        raise ConversionError("the graph resizes with antialiasing (ScaleAndTranslate)")
    if align_corners:
        raise ConversionError("the graph resizes with align_corners, which EXTRACT.RESIZE lacks")
    if half_pixel:
        return "bilinear", "ResizeBilinear with half_pixel_centers"
    return "bilinear_legacy", "ResizeBilinear without half_pixel_centers (TF1 resize_bilinear)"
