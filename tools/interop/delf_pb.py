"""The official DELF/DELG protobuf messages (DatumProto, DelfFeatures), built at run time.

The schema is ``protos/datum.proto`` and ``protos/feature.proto`` (the official field layout),
compiled into ``protos/delf.desc``; see protos/README.md for how to regenerate it. The classes are
made in a private descriptor pool with protobuf's runtime descriptor API, so they work with any
protobuf 4.21+ runtime and never clash with the official ``delf`` package's own modules.
"""

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protos", "delf.desc")
PACKAGE = "delf.protos"


def _message_classes(path=DESCRIPTOR_SET):
    with open(path, "rb") as handle:
        files = descriptor_pb2.FileDescriptorSet.FromString(handle.read())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:  # dependencies come first in a descriptor set
        pool.Add(file_proto)
    classes = {}
    for name in ("DatumShape", "FloatList", "DatumProto", "DelfFeature", "DelfFeatures"):
        descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        if hasattr(message_factory, "GetMessageClass"):
            classes[name] = message_factory.GetMessageClass(descriptor)
        else:  # protobuf < 4.22
            classes[name] = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return classes


_CLASSES = _message_classes()
DatumProto = _CLASSES["DatumProto"]
DelfFeature = _CLASSES["DelfFeature"]
DelfFeatures = _CLASSES["DelfFeatures"]
