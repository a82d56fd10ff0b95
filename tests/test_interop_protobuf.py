"""The official DELF/DELG feature files: our reader and writer against files made by the protobuf
runtime from the official field layout (built here, independently of tools/interop), the scale and
location conventions, corrupt files, and the freshness of the compiled schema."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tools.interop import delf_pb
from tools.interop.official_files import (
    OfficialFileError,
    official_scales,
    pyramid_scales,
    read_global,
    read_local,
    write_global,
    write_local,
)

PROTOS = Path(__file__).resolve().parents[1] / "tools" / "interop" / "protos"
F = descriptor_pb2.FieldDescriptorProto


def _field(message, name, number, kind, label=F.LABEL_OPTIONAL, type_name=None, packed=False):
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    if packed:
        field.options.packed = True
    return field


def _official_classes():
    """DatumProto and DelfFeatures exactly as tensorflow/models research/delf/delf/protos declares
    them (datum.proto, feature.proto), built field by field in a pool of their own."""
    datum = descriptor_pb2.FileDescriptorProto(
        name="delf/protos/datum.proto", package="delf.protos", syntax="proto2"
    )
    shape = datum.message_type.add(name="DatumShape")
    _field(shape, "dim", 1, F.TYPE_INT64, F.LABEL_REPEATED, packed=True)
    floats = datum.message_type.add(name="FloatList")
    _field(floats, "value", 1, F.TYPE_FLOAT, F.LABEL_REPEATED, packed=True)
    uints = datum.message_type.add(name="Uint32List")
    _field(uints, "value", 1, F.TYPE_UINT32, F.LABEL_REPEATED, packed=True)
    proto = datum.message_type.add(name="DatumProto")
    _field(proto, "shape", 1, F.TYPE_MESSAGE, type_name=".delf.protos.DatumShape")
    proto.oneof_decl.add(name="kind_oneof")
    for name, number, type_name in (
        ("float_list", 2, "FloatList"),
        ("uint32_list", 3, "Uint32List"),
    ):
        field = _field(proto, name, number, F.TYPE_MESSAGE, type_name=f".delf.protos.{type_name}")
        field.oneof_index = 0
    feature = descriptor_pb2.FileDescriptorProto(
        name="delf/protos/feature.proto",
        package="delf.protos",
        syntax="proto2",
        dependency=["delf/protos/datum.proto"],
    )
    one = feature.message_type.add(name="DelfFeature")
    _field(one, "descriptor", 1, F.TYPE_MESSAGE, type_name=".delf.protos.DatumProto")
    for name, number in (("x", 2), ("y", 3), ("scale", 4), ("orientation", 5), ("strength", 6)):
        _field(one, name, number, F.TYPE_FLOAT)
    many = feature.message_type.add(name="DelfFeatures")
    _field(many, "feature", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".delf.protos.DelfFeature")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(datum)
    pool.Add(feature)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"delf.protos.{name}"))
        for name in ("DatumProto", "DelfFeatures")
    )


OfficialDatum, OfficialFeatures = _official_classes()


def _official_local_file(path, rng, count=7, dim=5, scales=(0.25, 0.70710677, 1.4142135)):
    """A .delg_local file as the official feature_io writes one; returns the values it holds."""
    values = {
        "yx": rng.uniform(0, 500, (count, 2)).astype(np.float32),
        "inverse_scales": (1.0 / np.float32(rng.choice(scales, count))).astype(np.float32),
        "strength": rng.uniform(100, 900, count).astype(np.float32),
        "descriptors": rng.standard_normal((count, dim)).astype(np.float32),
    }
    message = OfficialFeatures()
    for row in range(count):
        feature = message.feature.add()
        feature.y, feature.x = (float(v) for v in values["yx"][row])
        feature.scale = float(values["inverse_scales"][row])
        feature.orientation = 0.0
        feature.strength = float(values["strength"][row])
        feature.descriptor.shape.dim.append(dim)
        feature.descriptor.float_list.value.extend(values["descriptors"][row].tolist())
    path.write_bytes(message.SerializeToString())
    return values


def test_official_files_read_with_our_conventions(tmp_path):
    rng = np.random.default_rng(0)
    values = _official_local_file(tmp_path / "a.delg_local", rng)
    local = read_local(tmp_path / "a.delg_local")
    assert np.array_equal(local["locations"], values["yx"][:, ::-1])  # (y, x) -> (x, y)
    assert np.array_equal(local["scores"], values["strength"])
    assert np.array_equal(local["descriptors"], values["descriptors"])
    assert set(local["scales"].tolist()) <= {np.float32(s) for s in (0.25, 0.70710677, 1.4142135)}
    assert np.array_equal(official_scales(local["scales"]), values["inverse_scales"])

    descriptor = rng.standard_normal(12).astype(np.float32)
    datum = OfficialDatum()
    datum.shape.dim.append(12)
    datum.float_list.value.extend(descriptor.tolist())
    (tmp_path / "a.delg_global").write_bytes(datum.SerializeToString())
    assert np.array_equal(read_global(tmp_path / "a.delg_global"), descriptor)


def test_our_files_parse_with_the_official_layout(tmp_path):
    rng = np.random.default_rng(1)
    locations = rng.uniform(0, 300, (9, 2)).astype(np.float32)
    scales = rng.choice(np.float32([0.5, 0.7071, 1.0, 1.4142]), 9)
    scores = rng.uniform(0, 1000, 9).astype(np.float32)
    descriptors = rng.standard_normal((9, 16)).astype(np.float32)
    write_local(tmp_path / "b.delg_local", locations, scales, scores, descriptors)
    parsed = OfficialFeatures.FromString((tmp_path / "b.delg_local").read_bytes()).feature
    assert len(parsed) == 9
    for row, feature in enumerate(parsed):
        assert (feature.y, feature.x) == (locations[row, 1], locations[row, 0])
        assert np.float32(feature.scale) == np.float32(1.0 / np.float64(scales[row]))
        assert feature.strength == scores[row] and feature.orientation == 0.0
        assert list(feature.descriptor.shape.dim) == [16]
        assert np.array_equal(np.float32(feature.descriptor.float_list.value), descriptors[row])
    # the same message as the official runtime serializes it, byte for byte
    again = OfficialFeatures()
    again.CopyFrom(OfficialFeatures.FromString((tmp_path / "b.delg_local").read_bytes()))
    assert again.SerializeToString() == (tmp_path / "b.delg_local").read_bytes()

    write_global(tmp_path / "b.delg_global", descriptors[0])
    datum = OfficialDatum.FromString((tmp_path / "b.delg_global").read_bytes())
    assert list(datum.shape.dim) == [16] and datum.WhichOneof("kind_oneof") == "float_list"
    assert np.array_equal(np.float32(datum.float_list.value), descriptors[0])


def test_round_trip_is_exact_in_float32(tmp_path):
    rng = np.random.default_rng(2)
    # scales whose float32 reciprocal does not invert back: the known-scale lookup restores them
    candidates = rng.uniform(0.2, 3.0, 4000).astype(np.float32)
    naive = (1.0 / official_scales(candidates).astype(np.float64)).astype(np.float32)
    scales = candidates[naive != candidates][:6]
    assert len(scales) == 6
    features = {
        "locations": rng.uniform(0, 300, (6, 2)).astype(np.float32),
        "scales": scales,
        "scores": rng.uniform(0, 1000, 6).astype(np.float32),
        "descriptors": rng.standard_normal((6, 8)).astype(np.float32),
    }
    write_local(tmp_path / "c.delg_local", **features)
    back = read_local(tmp_path / "c.delg_local", known_scales=scales)
    for field, values in features.items():
        assert back[field].dtype == np.float32 and np.array_equal(back[field], values), field
    assert not np.array_equal(pyramid_scales(official_scales(scales), known=()), scales)


def test_an_image_without_features_round_trips(tmp_path):
    empty = np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, 8))
    write_local(tmp_path / "d.delg_local", *empty)
    assert (tmp_path / "d.delg_local").read_bytes() == b""  # an empty DelfFeatures
    local = read_local(tmp_path / "d.delg_local")
    assert {field: values.shape[0] for field, values in local.items()} == dict.fromkeys(local, 0)


def test_corrupt_files_name_the_file_and_the_fault(tmp_path):
    write_local(
        tmp_path / "e.delg_local", *(np.ones((3, 2)), np.ones(3), np.ones(3), np.ones((3, 4)))
    )
    truncated = tmp_path / "t.delg_local"
    truncated.write_bytes((tmp_path / "e.delg_local").read_bytes()[:-5])
    with pytest.raises(OfficialFileError, match=r"t\.delg_local: not a serialized DelfFeatures"):
        read_local(truncated)
    quantised = OfficialDatum()
    quantised.shape.dim.append(3)
    quantised.uint32_list.value.extend([1, 2, 3])
    (tmp_path / "q.delg_global").write_bytes(quantised.SerializeToString())
    with pytest.raises(OfficialFileError, match="holds uint32_list, expected a float_list"):
        read_global(tmp_path / "q.delg_global")
    (tmp_path / "z.delg_global").write_bytes(b"")
    with pytest.raises(OfficialFileError, match="z.delg_global: the global descriptor holds no"):
        read_global(tmp_path / "z.delg_global")
    wrong = OfficialDatum()
    wrong.shape.dim.extend([2, 3])
    wrong.float_list.value.extend([1.0] * 5)
    (tmp_path / "w.delg_global").write_bytes(wrong.SerializeToString())
    with pytest.raises(OfficialFileError, match=r"has shape \[2, 3\] but 5 values"):
        read_global(tmp_path / "w.delg_global")


def test_compiled_schema_matches_the_proto_sources(tmp_path):
    """protos/delf.desc is what the pinned protoc makes of the .proto files beside it."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (requirements-interop.txt) compiles it")
    out = tmp_path / "delf.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--descriptor_set_out={out}",
            "datum.proto",
            "feature.proto",
        ],
        check=True,
        cwd=PROTOS,
    )
    assert out.read_bytes() == (PROTOS / "delf.desc").read_bytes(), (
        "tools/interop/protos/delf.desc is stale: regenerate it (tools/interop/protos/README.md)"
    )
    assert delf_pb.DelfFeatures.DESCRIPTOR.full_name == "delf.protos.DelfFeatures"


def _layout(descriptor):
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return {(f.name, f.number, f.type, f.label, f.options.packed) for f in proto.field}


def test_our_schema_has_the_official_field_layout():
    official_feature = OfficialFeatures.DESCRIPTOR.fields_by_name["feature"].message_type
    assert _layout(delf_pb.DelfFeature.DESCRIPTOR) == _layout(official_feature)
    assert _layout(delf_pb.DelfFeatures.DESCRIPTOR) == _layout(OfficialFeatures.DESCRIPTOR)
    assert _layout(delf_pb.DatumProto.DESCRIPTOR) == _layout(OfficialDatum.DESCRIPTOR)
    for name in ("shape", "float_list"):
        ours = delf_pb.DatumProto.DESCRIPTOR.fields_by_name[name].message_type
        official = OfficialDatum.DESCRIPTOR.fields_by_name[name].message_type
        assert _layout(ours) == _layout(official)
