"""TFRecord files without TensorFlow: the framing (TensorFlow's record_writer.cc: a little-endian
uint64 length, its masked CRC-32C, the data, the data's masked CRC-32C) and `tf.train.Example`
(tensorflow/core/example/example.proto, the same wire format) through protobuf.

The message classes live in a descriptor pool of their own: TensorFlow registers
`tensorflow.Example` in protobuf's default pool when it is imported, and a second registration of
the same names there (the `tfrecord` package's copy, for one) fails in a process that holds both,
as a worker feeding JAX or PyTorch from tf.data does. CRC-32C is the `crc32c` package's.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, BinaryIO

import crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@functools.cache
def example_class() -> Any:
    """The `tf.train.Example` message class (BytesList, Int64List, FloatList, Feature, Features)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="mlbench/example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> descriptor_pb2.DescriptorProto:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, _F.TYPE_BYTES, rep, ""))
    message("FloatList", ("value", 1, _F.TYPE_FLOAT, rep, "")).field[0].options.packed = True
    message("Int64List", ("value", 1, _F.TYPE_INT64, rep, "")).field[0].options.packed = True
    feature = message(
        "Feature",
        ("bytes_list", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
        ("float_list", 2, _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
        ("int64_list", 3, _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message("Features", ("feature", 1, _F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Example", ("features", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def encode_example(x: bytes, y: int, pad: bytes | None = None) -> bytes:
    """An Example with features x (one bytes value) and y (one int64), and `pad` (ballast: a record of a
    workload's own size) where given."""
    ex = example_class()()
    ex.features.feature["x"].bytes_list.value.append(x)
    ex.features.feature["y"].int64_list.value.append(int(y))
    if pad is not None:
        ex.features.feature["pad"].bytes_list.value.append(pad)
    return ex.SerializeToString()


def decode_example(data: bytes) -> tuple[bytes, int]:
    feat = example_class().FromString(data).features.feature
    return feat["x"].bytes_list.value[0], int(feat["y"].int64_list.value[0])


def write_record(f: BinaryIO, data: bytes) -> int:
    """Appends one record; returns the bytes written."""
    head = struct.pack("<Q", len(data))
    f.write(head)
    f.write(struct.pack("<I", masked_crc(head)))
    f.write(data)
    f.write(struct.pack("<I", masked_crc(data)))
    return len(data) + 16


def read_record(f: BinaryIO, where: str) -> bytes:
    """The record at the file's position, its two CRCs checked; ValueError naming `where` otherwise."""
    head = f.read(12)
    if len(head) < 12:
        raise ValueError(f"{where}: the file ends inside the record's header (truncated)")
    (length,) = struct.unpack("<Q", head[:8])
    if masked_crc(head[:8]) != struct.unpack("<I", head[8:])[0]:
        raise ValueError(f"{where}: the length's CRC does not match (corrupt)")
    body = f.read(length + 4)
    if len(body) < length + 4:
        raise ValueError(f"{where}: the file ends inside the record (truncated)")
    if masked_crc(body[:length]) != struct.unpack("<I", body[length:])[0]:
        raise ValueError(f"{where}: the data's CRC does not match (corrupt)")
    return body[:length]
