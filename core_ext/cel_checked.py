"""The `cel.expr.CheckedExpr` message, readable without the cel-spec .proto files.

`cel_expr_python`'s `Expression.serialize()` returns a `google.protobuf.Any` holding a
`cel.expr.CheckedExpr` (cel-spec's `checked.proto` and `syntax.proto`). No package on PyPI
ships those generated modules, and the payauth build compiles only its own protos, so this
module declares the few messages the policy compiler reads (field numbers exactly as in
cel-spec) in a private descriptor pool and builds their classes with the protobuf runtime.
The private pool keeps them apart from any `cel.expr` modules a test may load.
"""

from __future__ import annotations

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_SCALARS = {
    "string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int64": _F.TYPE_INT64,
    "int32": _F.TYPE_INT32, "uint64": _F.TYPE_UINT64, "double": _F.TYPE_DOUBLE,
    "bytes": _F.TYPE_BYTES,
}

# (message path, [(field name, number, type, repeated, oneof index or None)]); a type that is
# not a scalar is a message (".x.y") or an enum ("enum:.x.y"). Oneofs are declared per message.
_MESSAGES: dict[str, tuple[list[str], list[tuple[str, int, str, bool, int | None]]]] = {
    "Expr": (["expr_kind"], [
        ("id", 2, "int64", False, None),
        ("const_expr", 3, ".cel.expr.Constant", False, 0),
        ("ident_expr", 4, ".cel.expr.Expr.Ident", False, 0),
        ("select_expr", 5, ".cel.expr.Expr.Select", False, 0),
        ("call_expr", 6, ".cel.expr.Expr.Call", False, 0),
        ("list_expr", 7, ".cel.expr.Expr.CreateList", False, 0),
        ("struct_expr", 8, ".cel.expr.Expr.CreateStruct", False, 0),
        ("comprehension_expr", 9, ".cel.expr.Expr.Comprehension", False, 0),
    ]),
    "Expr.Ident": ([], [("name", 1, "string", False, None)]),
    "Expr.Select": ([], [
        ("operand", 1, ".cel.expr.Expr", False, None),
        ("field", 2, "string", False, None),
        ("test_only", 3, "bool", False, None),
    ]),
    "Expr.Call": ([], [
        ("target", 1, ".cel.expr.Expr", False, None),
        ("function", 2, "string", False, None),
        ("args", 3, ".cel.expr.Expr", True, None),
    ]),
    "Expr.CreateList": ([], [
        ("elements", 1, ".cel.expr.Expr", True, None),
        ("optional_indices", 2, "int32", True, None),
    ]),
    "Expr.CreateStruct": ([], [
        ("message_name", 1, "string", False, None),
        ("entries", 2, ".cel.expr.Expr.CreateStruct.Entry", True, None),
    ]),
    "Expr.CreateStruct.Entry": (["key_kind"], [
        ("id", 1, "int64", False, None),
        ("field_key", 2, "string", False, 0),
        ("map_key", 3, ".cel.expr.Expr", False, 0),
        ("value", 4, ".cel.expr.Expr", False, None),
        ("optional_entry", 5, "bool", False, None),
    ]),
    "Expr.Comprehension": ([], [
        ("iter_var", 1, "string", False, None),
        ("iter_range", 2, ".cel.expr.Expr", False, None),
        ("accu_var", 3, "string", False, None),
        ("accu_init", 4, ".cel.expr.Expr", False, None),
        ("loop_condition", 5, ".cel.expr.Expr", False, None),
        ("loop_step", 6, ".cel.expr.Expr", False, None),
        ("result", 7, ".cel.expr.Expr", False, None),
        ("iter_var2", 8, "string", False, None),
    ]),
    "Constant": (["constant_kind"], [
        ("null_value", 1, "enum:.google.protobuf.NullValue", False, 0),
        ("bool_value", 2, "bool", False, 0),
        ("int64_value", 3, "int64", False, 0),
        ("uint64_value", 4, "uint64", False, 0),
        ("double_value", 5, "double", False, 0),
        ("string_value", 6, "string", False, 0),
        ("bytes_value", 7, "bytes", False, 0),
        ("duration_value", 8, ".google.protobuf.Duration", False, 0),
        ("timestamp_value", 9, ".google.protobuf.Timestamp", False, 0),
    ]),
    "SourceInfo": ([], [
        ("syntax_version", 1, "string", False, None),
        ("location", 2, "string", False, None),
        ("line_offsets", 3, "int32", True, None),
        ("positions", 4, "map:int64:int32", True, None),
    ]),
    "Type": (["type_kind"], [
        ("dyn", 1, ".google.protobuf.Empty", False, 0),
        ("null", 2, "enum:.google.protobuf.NullValue", False, 0),
        ("primitive", 3, "enum:.cel.expr.Type.PrimitiveType", False, 0),
        ("wrapper", 4, "enum:.cel.expr.Type.PrimitiveType", False, 0),
        ("well_known", 5, "enum:.cel.expr.Type.WellKnownType", False, 0),
        ("list_type", 6, ".cel.expr.Type.ListType", False, 0),
        ("map_type", 7, ".cel.expr.Type.MapType", False, 0),
        ("function", 8, ".cel.expr.Type.FunctionType", False, 0),
        ("message_type", 9, "string", False, 0),
        ("type_param", 10, "string", False, 0),
        ("type", 11, ".cel.expr.Type", False, 0),
        ("error", 12, ".google.protobuf.Empty", False, 0),
        ("abstract_type", 14, ".cel.expr.Type.AbstractType", False, 0),
    ]),
    "Type.ListType": ([], [("elem_type", 1, ".cel.expr.Type", False, None)]),
    "Type.MapType": ([], [
        ("key_type", 1, ".cel.expr.Type", False, None),
        ("value_type", 2, ".cel.expr.Type", False, None),
    ]),
    "Type.FunctionType": ([], [
        ("result_type", 1, ".cel.expr.Type", False, None),
        ("arg_types", 2, ".cel.expr.Type", True, None),
    ]),
    "Type.AbstractType": ([], [
        ("name", 1, "string", False, None),
        ("parameter_types", 2, ".cel.expr.Type", True, None),
    ]),
    "Reference": ([], [
        ("name", 1, "string", False, None),
        ("overload_id", 3, "string", True, None),
        ("value", 4, ".cel.expr.Constant", False, None),
    ]),
    "CheckedExpr": ([], [
        ("reference_map", 2, "map:int64:.cel.expr.Reference", True, None),
        ("type_map", 3, "map:int64:.cel.expr.Type", True, None),
        ("source_info", 5, ".cel.expr.SourceInfo", False, None),
        ("expr_version", 6, "string", False, None),
        ("expr", 4, ".cel.expr.Expr", False, None),
    ]),
}
_ENUMS = {
    "Type.PrimitiveType": ["PRIMITIVE_TYPE_UNSPECIFIED", "BOOL", "INT64", "UINT64", "DOUBLE",
                           "STRING", "BYTES"],
    "Type.WellKnownType": ["WELL_KNOWN_TYPE_UNSPECIFIED", "ANY", "TIMESTAMP", "DURATION"],
}


def _set_type(field: descriptor_pb2.FieldDescriptorProto, kind: str) -> None:
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    elif kind.startswith("enum:"):
        field.type = _F.TYPE_ENUM
        field.type_name = kind[5:]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = kind


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="payauth_private/cel/expr/checked.proto", package="cel.expr", syntax="proto3",
        dependency=["google/protobuf/duration.proto", "google/protobuf/empty.proto",
                    "google/protobuf/struct.proto", "google/protobuf/timestamp.proto"],
    )
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path in _MESSAGES:  # parents are listed before their nested messages
        parent, _, name = path.rpartition(".")
        container = protos[parent].nested_type if parent else file.message_type
        protos[path] = container.add(name=name)
    for path, values in _ENUMS.items():
        parent, _, name = path.rpartition(".")
        enum = protos[parent].enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for path, (oneofs, fields) in _MESSAGES.items():
        message = protos[path]
        for oneof in oneofs:
            message.oneof_decl.add(name=oneof)
        for name, number, kind, repeated, oneof_index in fields:
            field = message.field.add(name=name, number=number, label=_REP if repeated else _OPT)
            if kind.startswith("map:"):
                _, key_kind, value_kind = kind.split(":", 2)
                entry_name = "".join(part.title() for part in name.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                _set_type(entry.field.add(name="key", number=1, label=_OPT), key_kind)
                _set_type(entry.field.add(name="value", number=2, label=_OPT), value_kind)
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".cel.expr.{path}.{entry_name}"
            else:
                _set_type(field, kind)
            if oneof_index is not None:
                field.oneof_index = oneof_index
    return file


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (duration_pb2, empty_pb2, struct_pb2, timestamp_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    pool.Add(_build_file())
    return pool


_POOL = _build_pool()
CheckedExpr = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("cel.expr.CheckedExpr"))
Expr = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("cel.expr.Expr"))
Type = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("cel.expr.Type"))
Constant = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("cel.expr.Constant"))

CHECKED_EXPR_TYPE_URL = "type.googleapis.com/cel.expr.CheckedExpr"

__all__ = ["CHECKED_EXPR_TYPE_URL", "CheckedExpr", "Constant", "Expr", "Type"]
