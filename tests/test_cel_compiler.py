"""The CEL compiler's contract: positions on errors, clean rejections outside the subset,
and evaluation edge cases of the core (scratch space, shared lists, time zones)."""

from __future__ import annotations

import pytest

from payauth.core.cel_compiler import (
    CelCompileError,
    compile_expression,
    decision_compiler,
    decision_layout,
    zone_spec,
)
from payauth.core.cel_values import CelError, Duration, MapValue, Timestamp, TypeValue, Uint


def test_syntax_and_type_errors_carry_line_column_and_caret() -> None:
    with pytest.raises(CelCompileError) as caught:
        compile_expression("x > 1 &&\n  x +", {"x": "int"})
    assert (caught.value.line, caught.value.column) == (2, 6)
    assert "2:6:" in str(caught.value) and "^" in str(caught.value)
    with pytest.raises(CelCompileError) as caught:
        compile_expression("x + 'a'", {"x": "int"})
    assert (caught.value.line, caught.value.column) == (1, 3)
    assert "no matching overload" in caught.value.message


@pytest.mark.parametrize(("source", "words"), [
    ("google.protobuf.Int64Value{value: 1} == 1", "wrapper"),
    ("'abc'.matches(s)", "literal pattern"),
    ("'abc'.matches('[')", "invalid regular expression"),
    ("timestamp(0).getHours(s)", "literal time zone"),
    ("timestamp(0).getHours('Mars/Olympus')", "invalid time zone"),
])
def test_constructs_outside_the_subset_are_rejected_with_a_reason(source: str,
                                                                   words: str) -> None:
    with pytest.raises(CelCompileError) as caught:
        compile_expression(source, {"s": "string"})
    assert words in caught.value.message
    assert caught.value.line == 1 and caught.value.column >= 1


def test_decision_context_messages_are_read_field_by_field() -> None:
    compiler = decision_compiler()
    with pytest.raises(CelCompileError) as caught:
        compiler.compile("txn == txn")
    assert "is a message" in caught.value.message
    expression = compiler.compile("txn.amount_minor > 100 && card.status == 'ACTIVE'")
    layout = decision_layout()
    assert expression.evaluate({"txn.amount_minor": 101, "card.status": "ACTIVE"}) is True
    assert {"txn.amount_minor", "txn.timestamp?", "features.card_txn_count_1h", "score",
            "watch_hits"} <= set(layout.by_path)


@pytest.mark.parametrize(("source", "expected"), [
    ("[1, 2, 3].map(v, v * 2) + [8]", [2, 4, 6, 8]),
    ("[1, 2].map(v, [v, v * 10])", [[1, 10], [2, 20]]),
    ("{'a': 1, 'b': 2}.transformMap(k, v, v * 2)", MapValue([("a", 2), ("b", 4)])),
    ("{'a': 1, 'b': 2}.filter(k, k == 'b')", ["b"]),
    ("[1, 2, 3].transformList(i, v, i < 2, i + v)", [1, 3]),
    ("type(1u) == uint && type([]) == list", True),
    ("type(duration('1s'))", TypeValue("google.protobuf.Duration")),
    ("uint(1) + 2u", Uint(3)),
    ("timestamp('2024-03-10T12:00:00Z') - duration('36h')", Timestamp(1709942400, 0)),
    ("duration('1.5s') + duration('-2s')", Duration(-1, 500_000_000)),
    ("{1: 'a', 2u: 'b'}[2.0]", "b"),
    ("size('🐱😀') == 2 && '🐱😀'.startsWith('🐱')", True),
])
def test_evaluation(source: str, expected: object) -> None:
    assert compile_expression(source).evaluate() == expected


def test_shared_lists_are_never_changed_by_appends() -> None:
    # `m` ends at the arena's top; appending to one copy must not show in the other.
    source = "[[1].map(v, v)].map(m, [m + [2], m + [3]])"
    assert compile_expression(source).evaluate() == [[[1, 2], [1, 3]]]


def test_running_out_of_scratch_space_is_an_error_value() -> None:
    result = compile_expression("l.map(a, l.map(b, string(a) + '-' + string(b)))",
                                {"l": ("list", "int")}).evaluate({"l": list(range(300))})
    assert isinstance(result, CelError) and "scratch" in result.message


def test_time_zones_follow_cel_cpp() -> None:
    assert zone_spec("") is None
    assert zone_spec("+05:30").fixed == (5 * 3600 + 30 * 60, 0)
    assert zone_spec("-02:30").fixed == (-(2 * 3600 + 30 * 60), 0)
    sydney = zone_spec("Australia/Sydney")
    assert sydney.fixed is None and len(sydney.starts) > 100
    expression = compile_expression(
        "[ts.getHours('America/Sao_Paulo'), ts.getDayOfWeek('Asia/Tokyo'), "
        "ts.getMinutes('Asia/Kathmandu'), ts.getDate('-03:00')]", {"ts": "timestamp"})
    # 2009-02-13T23:31:30Z: 21:31 in Sao Paulo (summer time), Saturday in Tokyo.
    assert expression.evaluate({"ts": Timestamp(1234567890)}) == [21, 6, 16, 13]
    result = expression.evaluate({"ts": Timestamp(-3_000_000_000)})  # 1874: outside tables
    assert isinstance(result, CelError)
