"""Compile CEL expressions into the core's register programs.

Parsing and type checking are Google's own CEL front end (`cel-expr-python`): it declares
the variables with their static types, checks the expression with CEL's exact rules and
hands back a `cel.expr.CheckedExpr` whose every call has its overload resolved. This module
only lowers that checked tree into `payauth.core.cel_eval` instructions, and rejects, with
the line and column, whatever lies outside payauth's documented subset
(docs/policy-language.md) instead of ever evaluating it differently from CEL.

The input of a program is a `Layout`: numbered slots, each with its CEL type. A layout is
either a set of declared variables (`Layout.of_variables({"x": "int"})`) or the decision
context message (`decision_layout()`), whose leaf fields (`txn.amount_minor` ...) are the
slots, so one typed vector feeds every policy.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import functools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any

from cel_expr_python import cel
from google.protobuf import any_pb2, descriptor, descriptor_pool

from payauth.core import cel_checked
from payauth.core.cel_eval import (
    JUMP_IF_FALSE,
    JUMP_IF_FALSE_OPS,
    OPCODES,
    TIME_FIELDS,
    TYPE_CODES,
    Activation,
    Program,
    Scratch,
    regex_error,
)
from payauth.core.cel_values import TypeValue

OP = OPCODES

# A CEL type as the compiler and the evaluator's inputs name it: "int", "uint", "double",
# "bool", "string", "bytes", "timestamp", "duration", "null", "type", None (dyn),
# ("list", elem) and ("map", key, value).
Hint = Any

_PRIMITIVE_HINTS = {1: "bool", 2: "int", 3: "uint", 4: "double", 5: "string", 6: "bytes"}
_SIMPLE_CEL_TYPES = {
    "int": cel.Type.INT, "uint": cel.Type.UINT, "double": cel.Type.DOUBLE,
    "bool": cel.Type.BOOL, "string": cel.Type.STRING, "bytes": cel.Type.BYTES,
    "timestamp": cel.Type.TIMESTAMP, "duration": cel.Type.DURATION, "null": cel.Type.NULL,
    None: cel.Type.DYN,
}

# The CEL extension the front end needs for two-variable comprehensions
# (`exists(i, v, ...)`, `transformList`, `transformMap`); everything else is standard CEL.
_ENV_CONFIG = "extensions:\n  - name: \"two-var-comprehensions\"\n"

# cel-cpp's "time zone" argument: an IANA name, or a [+-]HH:MM offset.
_ZONE_RANGE = (datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC),
               datetime.datetime(2200, 1, 1, tzinfo=datetime.UTC))
_RULE_ERA = int(datetime.datetime(2038, 2, 1, tzinfo=datetime.UTC).timestamp())
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Universal", "Etc/Universal",
                        "Zulu", "Etc/Zulu", "UCT", "Etc/UCT", "GMT0", "Etc/GMT0", "Greenwich",
                        "Etc/Greenwich"})


class CelCompileError(ValueError):
    """An expression that does not compile: a syntax or type error from the CEL front end,
    or a construct outside payauth's subset. `line` and `column` are 1-based (column in
    Unicode code points) and 0 when unknown."""

    def __init__(self, message: str, line: int = 0, column: int = 0, source: str = "") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.line:
            return self.message
        text = f"{self.line}:{self.column}: {self.message}"
        lines = self.source.split("\n")
        if 0 < self.line <= len(lines):
            text += f"\n | {lines[self.line - 1]}\n | {'.' * (self.column - 1)}^"
        return text


def cel_type(hint: Hint) -> cel.Type:
    """The cel-expr-python type of a hint."""
    if isinstance(hint, tuple):
        if hint[0] == "list":
            return cel.Type.List(cel_type(hint[1]))
        if hint[0] == "map":
            return cel.Type.Map(cel_type(hint[1]), cel_type(hint[2]))
        if hint[0] == "message":
            return cel.Type(hint[1])
    return _SIMPLE_CEL_TYPES[hint]


def hint_of_checked_type(t: Any) -> Hint:
    """The hint of a `cel.expr.Type`; raises ValueError for types outside the subset."""
    kind = t.WhichOneof("type_kind")
    if kind == "primitive":
        return _PRIMITIVE_HINTS[t.primitive]
    if kind == "well_known":
        if t.well_known == 2:
            return "timestamp"
        if t.well_known == 3:
            return "duration"
        raise ValueError("google.protobuf.Any values are not supported")
    if kind == "list_type":
        return ("list", hint_of_checked_type(t.list_type.elem_type))
    if kind == "map_type":
        return ("map", hint_of_checked_type(t.map_type.key_type),
                hint_of_checked_type(t.map_type.value_type))
    if kind in ("dyn", "type_param", None):
        return None
    if kind == "null":
        return "null"
    if kind == "type":
        return "type"
    if kind == "wrapper":
        raise ValueError("protobuf wrapper types (google.protobuf.Int64Value ...) are not "
                         "supported")
    if kind == "message_type":
        if t.message_type == "google.protobuf.Timestamp":
            return "timestamp"
        if t.message_type == "google.protobuf.Duration":
            return "duration"
        raise ValueError(f"message type {t.message_type} is not supported")
    if kind == "abstract_type":
        raise ValueError(f"{t.abstract_type.name} values are not supported")
    raise ValueError(f"{kind} types are not supported")


# ---------------------------------------------------------------------------------------------
# Layouts


@dataclasses.dataclass(frozen=True)
class Slot:
    """One input of a layout: its register index, dotted path and CEL type."""

    index: int
    path: str
    hint: Hint


class Layout:
    """The inputs of programs: variables declared to the CEL front end, and the slots that
    hold their values (a message variable is one slot per field, plus presence slots)."""

    def __init__(self, variables: Mapping[str, cel.Type], slots: Sequence[Slot],
                 messages: Mapping[str, str] | None = None,
                 pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self.variables = dict(variables)
        self.slots = list(slots)
        self.by_path = {slot.path: slot for slot in self.slots}
        # variable name -> full message name, for variables that are context messages
        self.messages = dict(messages or {})
        self.pool = pool
        self.hints = [slot.hint for slot in self.slots]

    @classmethod
    def of_variables(cls, declarations: Mapping[str, Hint]) -> Layout:
        """A layout of plain variables: {"x": "int", "tags": ("list", "string"), "v": None}."""
        slots = [Slot(i, name, hint) for i, (name, hint) in enumerate(declarations.items())]
        return cls({name: cel_type(hint) for name, hint in declarations.items()}, slots)

    def activation(self, values: Mapping[str, Any] | None = None) -> Activation:
        """A new input vector, with `values` (by slot path) set."""
        act = Activation(self.hints)
        for path, value in (values or {}).items():
            act.set(self.by_path[path].index, value)
        return act

    def presence_path(self, path: str) -> str:
        return path + "?"


_FIELD_HINTS = {
    descriptor.FieldDescriptor.TYPE_INT64: "int", descriptor.FieldDescriptor.TYPE_INT32: "int",
    descriptor.FieldDescriptor.TYPE_SINT64: "int", descriptor.FieldDescriptor.TYPE_SINT32: "int",
    descriptor.FieldDescriptor.TYPE_SFIXED64: "int",
    descriptor.FieldDescriptor.TYPE_SFIXED32: "int",
    descriptor.FieldDescriptor.TYPE_UINT64: "uint", descriptor.FieldDescriptor.TYPE_UINT32: "uint",
    descriptor.FieldDescriptor.TYPE_FIXED64: "uint",
    descriptor.FieldDescriptor.TYPE_FIXED32: "uint",
    descriptor.FieldDescriptor.TYPE_DOUBLE: "double",
    descriptor.FieldDescriptor.TYPE_FLOAT: "double",
    descriptor.FieldDescriptor.TYPE_BOOL: "bool", descriptor.FieldDescriptor.TYPE_STRING: "string",
    descriptor.FieldDescriptor.TYPE_BYTES: "bytes",
}


def _field_hint(field: descriptor.FieldDescriptor) -> Hint:
    if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            hint = "timestamp"
        elif name == "google.protobuf.Duration":
            hint = "duration"
        else:
            return ("message", name)
    elif field.type == descriptor.FieldDescriptor.TYPE_ENUM:
        hint = "int"
    else:
        hint = _FIELD_HINTS[field.type]
    if field.is_repeated:
        return ("list", hint)
    return hint


def message_layout(message: descriptor.Descriptor) -> Layout:
    """A layout whose variables are the fields of `message`: scalar and list fields are one
    slot each; a message field is a variable whose own fields are slots (one level deep),
    with a presence slot ("txn?", "txn.timestamp?") for each message-typed field."""
    variables: dict[str, cel.Type] = {}
    messages: dict[str, str] = {}
    slots: list[Slot] = []

    def add(path: str, hint: Hint) -> None:
        slots.append(Slot(len(slots), path, hint))

    for field in message.fields:
        hint = _field_hint(field)
        if isinstance(hint, tuple) and hint[0] == "message":
            variables[field.name] = cel.Type(hint[1])
            messages[field.name] = hint[1]
            add(field.name + "?", "bool")
            for sub in field.message_type.fields:
                sub_hint = _field_hint(sub)
                if isinstance(sub_hint, tuple) and sub_hint[0] == "message":
                    continue  # not readable from policies (none in DecisionContext)
                add(f"{field.name}.{sub.name}", sub_hint)
                if sub.type == descriptor.FieldDescriptor.TYPE_MESSAGE and \
                        not sub.is_repeated:
                    add(f"{field.name}.{sub.name}?", "bool")
        else:
            variables[field.name] = cel_type(hint)
            add(field.name, hint)
    return Layout(variables, slots, messages, message.file.pool)


@functools.cache
def decision_layout() -> Layout:
    """The layout of `payauth.v1.DecisionContext`, shared by every policy."""
    from payauth.v1 import context_pb2

    return message_layout(context_pb2.DecisionContext.DESCRIPTOR)


# ---------------------------------------------------------------------------------------------
# Time zones


@dataclasses.dataclass(frozen=True)
class ZoneSpec:
    """A zone table for the evaluator: offsets[i] applies from starts[i] (UTC seconds) up to
    the next start, until `limit`; or a fixed (seconds, nanos) offset everywhere."""

    starts: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()
    limit: int = 0
    fixed: tuple[int, int] | None = None


_ABSL_DURATION = re.compile(r"([0-9]*)(?:\.([0-9]*))?([a-z]+)")
_ABSL_UNITS = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def _absl_duration_nanos(text: str) -> int | None:
    """absl::ParseDuration's reading of `text` in nanoseconds, or None."""
    sign = 1
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        return None
    total = 0
    pos = 0
    while pos < len(text):
        match = _ABSL_DURATION.match(text, pos)
        if not match or not (match.group(1) or match.group(2)) or match.group(3) not in _ABSL_UNITS:
            return None
        unit = _ABSL_UNITS[match.group(3)]
        frac = match.group(2) or ""
        total += int(match.group(1) or 0) * unit
        if frac:
            total += int(frac) * unit // 10 ** len(frac)
        pos = match.end()
    return sign * total


@functools.lru_cache(maxsize=512)
def zone_spec(name: str) -> ZoneSpec | None:
    """The table of a time zone argument as cel-cpp reads it: "" is UTC (None), then an IANA
    name, then "[+-]HH:MM" as a fixed offset; ValueError otherwise. IANA tables cover
    1900-2199 from the system's tz database."""
    if name == "":
        return None
    zone = None
    if re.fullmatch(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*", name):
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            zone = None
    if zone is None:
        if ":" in name:
            nanos = _absl_duration_nanos(name.replace(":", "h") + "m")
            if nanos is not None:
                seconds, nanos = divmod(nanos, 10**9)
                return ZoneSpec(fixed=(seconds, nanos))
        raise ValueError(f"invalid time zone {name!r}: use an IANA name such as "
                         "'America/Sao_Paulo' or an offset such as '-03:00'")
    if name in _UTC_NAMES:
        return ZoneSpec(fixed=(0, 0))
    start = int(_ZONE_RANGE[0].timestamp())
    limit = int(_ZONE_RANGE[1].timestamp())

    def offset(t: int) -> int:
        return int(datetime.datetime.fromtimestamp(t, zone).utcoffset().total_seconds())

    starts = [start]
    offsets = [offset(start)]
    t = start
    current = offsets[0]
    # Steps find every change of offset and bisection its exact second. Daily steps up to
    # 2038, where the tz database lists transitions one by one; weekly after, where zones
    # follow their yearly rule (changes months apart).
    while t < limit:
        step = 86400 if t < _RULE_ERA else 7 * 86400
        nxt = min(t + step, limit)
        if nxt < limit and offset(nxt) != current:
            lo, hi = t, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == current:
                    lo = mid
                else:
                    hi = mid
            current = offset(hi)
            starts.append(hi)
            offsets.append(current)
            nxt = hi
        t = nxt
    return ZoneSpec(tuple(starts), tuple(offsets), limit)


# ---------------------------------------------------------------------------------------------
# Programs


@dataclasses.dataclass
class ProgramSpec:
    """What `cel_eval.Program` is built from."""

    n_inputs: int
    n_regs: int = 0
    code: list[tuple[int, int, int, int, int]] = dataclasses.field(default_factory=list)
    consts: list[tuple[int, Any, Hint]] = dataclasses.field(default_factory=list)
    regexes: list[str] = dataclasses.field(default_factory=list)
    zones: list[ZoneSpec] = dataclasses.field(default_factory=list)
    entries: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)


class ProgramBuilder:
    """Accumulates the instructions and constants of one or more expressions (a policy's
    rules share one register file and constant pool)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.spec = ProgramSpec(n_inputs=len(layout.slots), n_regs=len(layout.slots))
        self._const_regs: dict[Any, int] = {}
        self._regex_index: dict[str, int] = {}
        self._zone_index: dict[ZoneSpec, int] = {}
        # The input slots the expressions read: a caller may fill only these.
        self.inputs_read: set[int] = set()

    def read_input(self, slot: int) -> int:
        """Note that the program reads input `slot`; the slot (its register)."""
        self.inputs_read.add(slot)
        return slot

    def temp(self, count: int = 1) -> int:
        reg = self.spec.n_regs
        self.spec.n_regs += count
        return reg

    def const(self, value: Any, hint: Hint) -> int:
        key = (_const_key(value), repr(hint))
        reg = self._const_regs.get(key)
        if reg is None:
            reg = self.temp()
            self.spec.consts.append((reg, value, hint))
            self._const_regs[key] = reg
        return reg

    def emit(self, op: str, dst: int = 0, a: int = 0, b: int = 0, c: int = 0) -> int:
        self.spec.code.append((OP[op], dst, a, b, c))
        return len(self.spec.code) - 1

    def patch(self, at: int, field: str, value: int) -> None:
        op, dst, a, b, c = self.spec.code[at]
        fields = {"op": op, "dst": dst, "a": a, "b": b, "c": c}
        fields[field] = value
        self.spec.code[at] = (fields["op"], fields["dst"], fields["a"], fields["b"],
                              fields["c"])

    @property
    def pc(self) -> int:
        return len(self.spec.code)

    def regex(self, pattern: str) -> int:
        if pattern not in self._regex_index:
            self._regex_index[pattern] = len(self.spec.regexes)
            self.spec.regexes.append(pattern)
        return self._regex_index[pattern]

    def zone(self, spec: ZoneSpec) -> int:
        if spec not in self._zone_index:
            self._zone_index[spec] = len(self.spec.zones)
            self.spec.zones.append(spec)
        return self._zone_index[spec]

    def add_entry(self, start: int, result: int) -> int:
        self.spec.entries.append((start, self.pc, result))
        return len(self.spec.entries) - 1

    def build(self) -> Program:
        return Program(self.spec)


def _const_key(value: Any) -> Any:
    # Constants are shared by value and Python type (1, 1.0 and True stay apart).
    if isinstance(value, list):
        return ("list", tuple(_const_key(v) for v in value))
    if isinstance(value, tuple):
        return (type(value).__name__, tuple(_const_key(v) for v in value))
    return (type(value).__name__, value if not isinstance(value, float) else repr(value))


# CEL operators and functions -> opcodes.
_BINARY = {
    "_==_": "EQ", "_!=_": "NE", "_<_": "LT", "_<=_": "LE", "_>_": "GT", "_>=_": "GE",
    "_+_": "ADD", "_-_": "SUB", "_*_": "MUL", "_/_": "DIV", "_%_": "MOD", "_[_]": "INDEX",
    "@in": "IN",
}
_CONVERSIONS = {
    "int": "TO_INT", "uint": "TO_UINT", "double": "TO_DOUBLE", "string": "TO_STRING",
    "bytes": "TO_BYTES", "bool": "TO_BOOL", "timestamp": "TO_TIMESTAMP",
    "duration": "TO_DURATION", "type": "TYPE_OF",
}
_STRING_MEMBERS = {"startsWith": "STARTS_WITH", "endsWith": "ENDS_WITH", "contains": "CONTAINS"}


class _Lowering:
    """Lowers one checked expression into a ProgramBuilder."""

    def __init__(self, builder: ProgramBuilder, checked: Any, source: str) -> None:
        self.b = builder
        self.layout = builder.layout
        self.checked = checked
        self.source = source
        self.refs = checked.reference_map
        self.types = checked.type_map
        self.positions = checked.source_info.positions
        self.line_offsets = list(checked.source_info.line_offsets)
        self.scopes: list[dict[str, int]] = []

    # -- errors --------------------------------------------------------------------------------

    def error(self, expr: Any, message: str) -> CelCompileError:
        line = column = 0
        offset = self.positions.get(expr.id) if expr is not None else None
        if offset is not None:
            line = bisect.bisect_right(self.line_offsets, offset) + 1
            line_start = self.line_offsets[line - 2] if line >= 2 else 0
            column = offset - line_start + 1
        return CelCompileError(message, line, column, self.source)

    def check_type(self, expr: Any) -> None:
        t = self.types.get(expr.id)
        if t is None:
            return
        try:
            hint_of_checked_type(t)
        except ValueError as exc:
            raise self.error(expr, str(exc)) from None

    # -- expressions ---------------------------------------------------------------------------

    def value(self, expr: Any) -> int:
        """A register that holds the value of `expr` once its code has run."""
        kind = expr.WhichOneof("expr_kind")
        if kind == "const_expr":
            return self.constant(expr)
        if kind in ("ident_expr", "select_expr"):
            reg = self.reference(expr)
            if reg is not None:
                return reg
            if kind == "ident_expr":
                raise self.error(expr, f"undeclared reference to '{expr.ident_expr.name}'")
            return self.select(expr)
        self.check_type(expr)
        if kind == "call_expr":
            return self.call(expr)
        if kind == "list_expr":
            return self.list_literal(expr)
        if kind == "struct_expr":
            return self.map_literal(expr)
        if kind == "comprehension_expr":
            return self.comprehension(expr)
        raise self.error(expr, "this expression is not supported")

    def constant(self, expr: Any) -> int:
        c = expr.const_expr
        kind = c.WhichOneof("constant_kind")
        if kind == "null_value":
            return self.b.const(None, "null")
        if kind == "bool_value":
            return self.b.const(c.bool_value, "bool")
        if kind == "int64_value":
            return self.b.const(c.int64_value, "int")
        if kind == "uint64_value":
            return self.b.const(c.uint64_value, "uint")
        if kind == "double_value":
            return self.b.const(c.double_value, "double")
        if kind == "string_value":
            return self.b.const(c.string_value, "string")
        if kind == "bytes_value":
            return self.b.const(c.bytes_value, "bytes")
        raise self.error(expr, f"{kind} constants are not supported")

    def const_value(self, expr: Any) -> tuple[bool, Any, Hint]:
        """(is constant, value, hint) for literals, list and map literals of literals."""
        kind = expr.WhichOneof("expr_kind")
        if kind == "const_expr":
            c = expr.const_expr
            ck = c.WhichOneof("constant_kind")
            hints = {"null_value": "null", "bool_value": "bool", "int64_value": "int",
                     "uint64_value": "uint", "double_value": "double",
                     "string_value": "string", "bytes_value": "bytes"}
            if ck not in hints:
                return (False, None, None)
            value = None if ck == "null_value" else getattr(c, ck)
            return (True, value, hints[ck])
        if kind == "list_expr" and not expr.list_expr.optional_indices:
            items = [self.const_value(e) for e in expr.list_expr.elements]
            if all(item[0] for item in items):
                return (True, [_typed(v, h) for _, v, h in items], "list")
        return (False, None, None)

    def scope_lookup(self, name: str) -> int | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def reference(self, expr: Any) -> int | None:
        """The register of an identifier or qualified name, or None when `expr` is a
        field selection to evaluate."""
        kind = expr.WhichOneof("expr_kind")
        if kind == "ident_expr":
            name = expr.ident_expr.name
            if not name.startswith("."):
                reg = self.scope_lookup(name)
                if reg is not None:
                    return reg
        else:
            root = expr
            while root.WhichOneof("expr_kind") == "select_expr":
                root = root.select_expr.operand
            if root.WhichOneof("expr_kind") == "ident_expr" and \
                    not root.ident_expr.name.startswith(".") and \
                    self.scope_lookup(root.ident_expr.name) is not None:
                return None
            if expr.select_expr.test_only:
                return None
        ref = self.refs.get(expr.id)
        if ref is None or ref.overload_id:
            return None
        if ref.HasField("value"):
            return self.constant(cel_checked.Expr(id=expr.id, const_expr=ref.value))
        name = ref.name.lstrip(".")
        slot = self.layout.by_path.get(name)
        if slot is not None:
            return self.b.read_input(slot.index)
        if name in self.layout.messages:
            raise self.error(expr, f"'{name}' is a message: compare one of its fields "
                                   f"(e.g. {name}.<field>)")
        t = self.types.get(expr.id)
        if t is not None and t.WhichOneof("type_kind") == "type":
            return self.type_constant(expr, name)
        if kind == "ident_expr":
            raise self.error(expr, f"'{name}' is not a supported variable")
        return None

    def type_constant(self, expr: Any, name: str) -> int:
        aliases = {"google.protobuf.Timestamp": "google.protobuf.Timestamp",
                   "google.protobuf.Duration": "google.protobuf.Duration"}
        name = aliases.get(name, name)
        if name not in TYPE_CODES:
            raise self.error(expr, f"the type '{name}' is not supported")
        return self.b.const(TypeValue(name), "type")

    def select(self, expr: Any) -> int:
        sel = expr.select_expr
        operand = sel.operand
        # A field of a context message: txn.amount_minor and has(txn.device_id).
        ref = self.refs.get(operand.id)
        if operand.WhichOneof("expr_kind") in ("ident_expr", "select_expr") and ref is not None \
                and not ref.overload_id and ref.name in self.layout.messages \
                and self.reference_is_global(operand):
            path = f"{ref.name}.{sel.field}"
            slot = self.layout.by_path.get(path)
            if slot is None:
                raise self.error(expr, f"no such field '{sel.field}' in {ref.name}")
            if sel.test_only:
                presence = self.layout.by_path.get(path + "?")
                if presence is not None:
                    return self.b.read_input(presence.index)
                dst = self.b.temp()
                self.b.emit("HAS_VALUE", dst, self.b.read_input(slot.index))
                return dst
            return self.b.read_input(slot.index)
        t = self.types.get(operand.id)
        if t is not None and t.WhichOneof("type_kind") == "message_type":
            raise self.error(expr, f"fields of {t.message_type} are not supported")
        self.check_type(operand)
        base = self.value(operand)
        key = self.b.const(sel.field, "string")
        dst = self.b.temp()
        self.b.emit("HAS_KEY" if sel.test_only else "SELECT", dst, base, key)
        return dst

    def reference_is_global(self, expr: Any) -> bool:
        root = expr
        while root.WhichOneof("expr_kind") == "select_expr":
            root = root.select_expr.operand
        name = root.ident_expr.name if root.WhichOneof("expr_kind") == "ident_expr" else ""
        return name.startswith(".") or self.scope_lookup(name) is None

    def list_literal(self, expr: Any) -> int:
        lst = expr.list_expr
        if lst.optional_indices:
            raise self.error(expr, "optional list elements are not supported")
        is_const, value, _ = self.const_value(expr)
        if is_const:
            return self.b.const(value, None)
        regs = [self.value(e) for e in lst.elements]
        return self.gather("LIST", regs, len(regs))

    def gather(self, op: str, regs: list[int], count: int) -> int:
        # Elements must sit in consecutive registers.
        base = self.b.temp(len(regs)) if regs else 0
        for i, reg in enumerate(regs):
            self.b.emit("MOV", base + i, reg)
        dst = self.b.temp()
        self.b.emit(op, dst, base, count)
        return dst

    def map_literal(self, expr: Any) -> int:
        st = expr.struct_expr
        if st.message_name:
            raise self.error(expr, f"creating messages ({st.message_name}) is not supported")
        regs: list[int] = []
        for entry in st.entries:
            if entry.optional_entry:
                raise self.error(expr, "optional map entries are not supported")
            if entry.WhichOneof("key_kind") != "map_key":
                raise self.error(expr, "creating messages is not supported")
            regs.append(self.value(entry.map_key))
            regs.append(self.value(entry.value))
        return self.gather("MAP", regs, len(st.entries))

    # -- calls ---------------------------------------------------------------------------------

    def call(self, expr: Any) -> int:
        call = expr.call_expr
        fn = call.function
        args = list(call.args)
        has_target = call.HasField("target")
        if fn in ("_&&_", "_||_"):
            return self.logical(expr, fn == "_&&_", args)
        if fn == "_?_:_":
            return self.conditional(args)
        if fn in _BINARY and not has_target and len(args) == 2:
            a, b = self.value(args[0]), self.value(args[1])
            dst = self.b.temp()
            self.b.emit(_BINARY[fn], dst, a, b)
            return dst
        if fn == "!_":
            return self.unary("NOT", args[0])
        if fn == "-_":
            return self.unary("NEG", args[0])
        if fn in ("@not_strictly_false", "__not_strictly_false__"):
            return self.unary("NOT_STRICTLY_FALSE", args[0])
        if fn == "dyn" and not has_target:
            return self.value(args[0])
        if fn in _CONVERSIONS and not has_target and len(args) == 1:
            return self.unary(_CONVERSIONS[fn], args[0])
        if fn == "size":
            return self.unary("SIZE", call.target if has_target else args[0])
        if fn in _STRING_MEMBERS and has_target and len(args) == 1:
            a, b = self.value(call.target), self.value(args[0])
            dst = self.b.temp()
            self.b.emit(_STRING_MEMBERS[fn], dst, a, b)
            return dst
        if fn == "matches":
            subject, pattern = (call.target, args[0]) if has_target else (args[0], args[1])
            return self.matches(expr, subject, pattern)
        if fn in TIME_FIELDS and has_target and len(args) <= 1:
            return self.time_field(expr, fn, call.target, args)
        if fn == "cel.@mapInsert" and len(args) == 3:
            m, k, v = (self.value(a) for a in args)
            dst = self.b.temp()
            self.b.emit("MAP_INSERT", dst, m, k, v)
            return dst
        raise self.error(expr, f"function '{fn}' is not in payauth's CEL subset")

    def unary(self, op: str, arg: Any) -> int:
        a = self.value(arg)
        dst = self.b.temp()
        self.b.emit(op, dst, a)
        return dst

    def logical(self, expr: Any, is_and: bool, args: list[Any]) -> int:
        a = self.value(args[0])
        code = self.b.spec.code
        last = code[-1] if code else None
        if is_and and last is not None and last[1] == a and last[0] in JUMP_IF_FALSE_OPS:
            # The left operand is a test just computed into a temp of its own: the test
            # jumps when false, and the temp holds the `&&`'s value.
            dst = a
            jump = len(code) - 1
            self.b.patch(jump, "op", last[0] | JUMP_IF_FALSE)
        else:
            dst = self.b.temp()
            jump = self.b.emit("AND_SC" if is_and else "OR_SC", dst, a)
        b = self.value(args[1])
        self.b.emit("AND" if is_and else "OR", dst, a, b)
        self.b.patch(jump, "c", self.b.pc)
        return dst

    def conditional(self, args: list[Any]) -> int:
        dst = self.b.temp()
        cond = self.value(args[0])
        test = self.b.emit("COND", dst, cond)
        then = self.value(args[1])
        self.b.emit("MOV", dst, then)
        skip = self.b.emit("JMP")
        self.b.patch(test, "b", self.b.pc)
        other = self.value(args[2])
        self.b.emit("MOV", dst, other)
        self.b.patch(skip, "c", self.b.pc)
        self.b.patch(test, "c", self.b.pc)
        return dst

    def matches(self, expr: Any, subject: Any, pattern: Any) -> int:
        if pattern.WhichOneof("expr_kind") != "const_expr" or \
                pattern.const_expr.WhichOneof("constant_kind") != "string_value":
            raise self.error(pattern, "matches() needs a string literal pattern: regular "
                                      "expressions are compiled once, with the policy")
        text = pattern.const_expr.string_value
        problem = regex_error(text)
        if problem is not None:
            raise self.error(pattern, f"invalid regular expression: {problem}")
        a = self.value(subject)
        dst = self.b.temp()
        self.b.emit("MATCHES", dst, a, 0, self.b.regex(text))
        return dst

    def time_field(self, expr: Any, fn: str, target: Any, args: list[Any]) -> int:
        zone_index = -1
        if args:
            tz = args[0]
            if tz.WhichOneof("expr_kind") != "const_expr" or \
                    tz.const_expr.WhichOneof("constant_kind") != "string_value":
                raise self.error(tz, f"{fn}() needs a string literal time zone: zone tables "
                                     "are built once, with the policy")
            try:
                spec = zone_spec(tz.const_expr.string_value)
            except ValueError as exc:
                raise self.error(tz, str(exc)) from None
            if spec is not None:
                zone_index = self.b.zone(spec)
            else:
                zone_index = self.b.zone(ZoneSpec(fixed=(0, 0)))
        a = self.value(target)
        dst = self.b.temp()
        self.b.emit("TS_GET", dst, a, TIME_FIELDS[fn], zone_index)
        return dst

    # -- comprehensions ------------------------------------------------------------------------

    def comprehension(self, expr: Any) -> int:
        comp = expr.comprehension_expr
        dst = self.b.temp()
        accu = self.b.temp()
        init = self.value(comp.accu_init)
        self.b.emit("MOV", accu, init)
        rng = self.value(comp.iter_range)
        state = self.b.temp(2)
        init_at = self.b.emit("ITER_INIT", state, rng)
        var1 = self.b.temp()
        var2 = self.b.temp() if comp.iter_var2 else -1
        scope = {comp.accu_var: accu, comp.iter_var: var1}
        if comp.iter_var2:
            scope[comp.iter_var2] = var2
        self.scopes.append(scope)
        loop = self.b.emit("ITER_NEXT", var1, state, var2)
        cond = self.value(comp.loop_condition)
        test = self.b.emit("COND", dst, cond)
        step = self.loop_step(comp.loop_step, comp.accu_var, accu)
        self.b.emit("MOV", accu, step)
        self.b.emit("JMP", 0, 0, 0, loop)
        self.scopes.pop()
        done = self.b.pc
        self.b.patch(loop, "c", done)
        self.b.patch(test, "b", done)
        self.scopes.append({comp.accu_var: accu})
        result = self.value(comp.result)
        self.scopes.pop()
        self.b.emit("MOV", dst, result)
        skip = self.b.emit("JMP")
        self.b.patch(init_at, "c", self.b.pc)
        self.b.emit("MOV", dst, state)
        self.b.patch(skip, "c", self.b.pc)
        self.b.patch(test, "c", self.b.pc)
        return dst

    def loop_step(self, step: Any, accu_var: str, accu: int) -> int:
        # `@result + [x]` (map, filter) appends in place instead of copying the list.
        if step.WhichOneof("expr_kind") == "call_expr":
            call = step.call_expr
            if call.function == "_+_" and len(call.args) == 2 and \
                    call.args[0].WhichOneof("expr_kind") == "ident_expr" and \
                    call.args[0].ident_expr.name == accu_var and \
                    call.args[1].WhichOneof("expr_kind") == "list_expr" and \
                    len(call.args[1].list_expr.elements) == 1 and \
                    not call.args[1].list_expr.optional_indices:
                element = self.value(call.args[1].list_expr.elements[0])
                dst = self.b.temp()
                self.b.emit("APPEND", dst, accu, element)
                return dst
            if call.function == "_?_:_":
                dst = self.b.temp()
                cond = self.value(call.args[0])
                test = self.b.emit("COND", dst, cond)
                then = self.loop_step(call.args[1], accu_var, accu)
                self.b.emit("MOV", dst, then)
                skip = self.b.emit("JMP")
                self.b.patch(test, "b", self.b.pc)
                other = self.loop_step(call.args[2], accu_var, accu)
                self.b.emit("MOV", dst, other)
                self.b.patch(skip, "c", self.b.pc)
                self.b.patch(test, "c", self.b.pc)
                return dst
        return self.value(step)


def _typed(value: Any, hint: Hint) -> Any:
    from payauth.core.cel_values import Uint

    if hint == "uint":
        return Uint(value)
    return value


# ---------------------------------------------------------------------------------------------
# Public API


_ERROR_LINE = re.compile(r"ERROR: [^:]*:(\d+):(\d+): (.*)")


def _front_end_error(exc: Exception, source: str) -> CelCompileError:
    text = str(exc)
    match = _ERROR_LINE.search(text)
    if match:
        return CelCompileError(match.group(3).strip(), int(match.group(1)),
                               int(match.group(2)), source)
    return CelCompileError(text.split("\n")[0], 0, 0, source)


class CelCompiler:
    """Type-checks CEL text against a layout's variables and lowers it to programs."""

    def __init__(self, layout: Layout, container: str | None = None,
                 pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self.layout = layout
        kwargs: dict[str, Any] = {"variables": layout.variables,
                                  "config": cel.NewEnvConfigFromYaml(_ENV_CONFIG)}
        pool = pool or layout.pool
        if pool is not None:
            kwargs["descriptor_pool"] = pool
        if container:
            kwargs["container"] = container
        self._env = cel.NewEnv(**kwargs)

    def check(self, source: str) -> Any:
        """Parse and type-check `source`; its `cel.expr.CheckedExpr`."""
        try:
            expression = self._env.compile(source)
        except Exception as exc:  # cel-expr-python raises RuntimeError with the position
            raise _front_end_error(exc, source) from None
        packed = any_pb2.Any()
        packed.ParseFromString(expression.serialize())
        checked = cel_checked.CheckedExpr()
        checked.ParseFromString(packed.value)
        return checked

    def lower_into(self, builder: ProgramBuilder, source: str,
                   result_type: str | None = None) -> int:
        """Compile `source` into `builder` as a new entry; its index. With `result_type`
        ("bool" ...), an expression of another static type is rejected."""
        checked = self.check(source)
        lowering = _Lowering(builder, checked, source)
        if result_type is not None:
            t = checked.type_map.get(checked.expr.id)
            hint = None
            if t is not None:
                try:
                    hint = hint_of_checked_type(t)
                except ValueError:
                    hint = "?"
            if hint not in (result_type, None):
                raise lowering.error(checked.expr, f"the condition must be a {result_type}, "
                                                   f"not {_describe(hint)}")
        start = builder.pc
        result = lowering.value(checked.expr)
        return builder.add_entry(start, result)

    def compile(self, source: str) -> CompiledExpression:
        """Compile one expression."""
        builder = ProgramBuilder(self.layout)
        self.lower_into(builder, source)
        return CompiledExpression(source, self.layout, builder.build())


def _describe(hint: Hint) -> str:
    if isinstance(hint, tuple):
        return hint[0]
    return str(hint)


class CompiledExpression:
    """One compiled expression and the layout of its inputs. It owns one scratch space, so
    evaluate it from one thread at a time (a policy handles concurrency itself)."""

    def __init__(self, source: str, layout: Layout, program: Program) -> None:
        self.source = source
        self.layout = layout
        self.program = program
        self._scratch = Scratch(program)

    def evaluate(self, inputs: Activation | Mapping[str, Any] | None = None) -> Any:
        """Evaluate over an Activation of the layout, or a {path: value} mapping.
        Returns the Python form of the value; an evaluation error is a CelError value."""
        if not isinstance(inputs, Activation):
            inputs = self.layout.activation(inputs)
        return self.program.evaluate(inputs, self._scratch)


def compile_expression(source: str, variables: Mapping[str, Hint] | None = None,
                       container: str | None = None) -> CompiledExpression:
    """Compile `source` over plain declared variables ({"x": "int", ...})."""
    return CelCompiler(Layout.of_variables(variables or {}), container).compile(source)


def decision_compiler() -> CelCompiler:
    """A compiler over the decision context (txn, card, account, merchant, features...)."""
    return _decision_compiler()


@functools.cache
def _decision_compiler() -> CelCompiler:
    return CelCompiler(decision_layout())


__all__ = [
    "CelCompileError", "CelCompiler", "CompiledExpression", "Layout", "ProgramBuilder",
    "ProgramSpec", "Slot", "ZoneSpec", "cel_type", "compile_expression", "decision_compiler",
    "decision_layout", "hint_of_checked_type", "message_layout", "zone_spec",
]
