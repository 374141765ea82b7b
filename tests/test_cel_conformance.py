"""The CEL specification's conformance files, run through payauth's compiler and evaluator.

Every case of every file in shared/conformance/cel-spec/testdata is compiled and evaluated:
inside payauth's subset it must give the expected value (or an error where one is expected);
outside it the compiler must reject it cleanly (CelCompileError). "wrong" must be zero and
"rejected" under a third of all cases. `python tests/test_cel_conformance.py` prints the
per-file table that docs/policy-language.md quotes.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from payauth.core.cel_compiler import CelCompileError, CelCompiler, Layout, hint_of_checked_type
from payauth.core.cel_eval import RegexError
from payauth.core.cel_values import CelError, Duration, MapValue, Timestamp, TypeValue, Uint

CEL_SPEC = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "cel-spec"


# Python's text_format keeps the C escape \? as two characters where protobuf's C++ and Go
# readers, which the files are written for, read "?": unescape it before parsing.
C_QUESTION_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\\?")


class OutsideSubsetError(Exception):
    """A case whose inputs or expected value lie outside the subset (counted as rejected)."""


def compile_conformance_protos(out: Path) -> None:
    """Compile cel-spec's protos (syntax, checked, value, eval, conformance) into `out`."""
    from importlib.resources import files

    from grpc_tools import protoc

    root = CEL_SPEC / "proto"
    sources = [str(p.relative_to(root)) for p in sorted(root.rglob("*.proto"))]
    args = ["protoc", f"-I{root}", f"-I{files('grpc_tools') / '_proto'}",
            f"--python_out={out}", *sources]
    assert protoc.main(args) == 0, "protoc failed on the cel-spec protos"
    # Regular packages, so that another distribution's top-level `cel` module (a CEL
    # runtime installed for the benchmarks, say) cannot shadow the generated one.
    for folder in [out / "cel", *(p for p in (out / "cel").rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    for name in [m for m in sys.modules if m == "cel" or m.startswith("cel.")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def conformance_modules():
    if not (CEL_SPEC / "testdata").is_dir():
        pytest.fail(f"no CEL conformance data at {CEL_SPEC}: CI lays shared/ beside the repository")
    with tempfile.TemporaryDirectory(prefix="cel-spec-") as tmp:
        compile_conformance_protos(Path(tmp))
        sys.path.insert(0, tmp)
        try:
            simple = importlib.import_module("cel.expr.conformance.test.simple_pb2")
            # Registered so that text_format can read the Any values in the files.
            importlib.import_module("cel.expr.conformance.proto2.test_all_types_pb2")
            importlib.import_module("cel.expr.conformance.proto3.test_all_types_pb2")
            yield simple
        finally:
            sys.path.remove(tmp)


def load_files(simple: Any) -> list[Any]:
    files = []
    for path in sorted((CEL_SPEC / "testdata").glob("*.textproto")):
        message = simple.SimpleTestFile()
        text_format.Parse(C_QUESTION_ESCAPE.sub(r"\1?", path.read_text()), message)
        files.append(message)
    return files


# -- values ------------------------------------------------------------------------------------

def python_value(value: Any) -> Any:
    """A cel.expr.Value as the evaluator's Python input form."""
    kind = value.WhichOneof("kind")
    if kind == "null_value":
        return None
    if kind in ("bool_value", "int64_value", "double_value", "string_value", "bytes_value"):
        return getattr(value, kind)
    if kind == "uint64_value":
        return Uint(value.uint64_value)
    if kind == "list_value":
        return [python_value(v) for v in value.list_value.values]
    if kind == "map_value":
        return MapValue((python_value(e.key), python_value(e.value))
                        for e in value.map_value.entries)
    if kind == "type_value":
        return TypeValue(value.type_value)
    if kind == "object_value":
        url = value.object_value.type_url
        if url.endswith("google.protobuf.Timestamp"):
            from google.protobuf import timestamp_pb2
            ts = timestamp_pb2.Timestamp()
            value.object_value.Unpack(ts)
            return Timestamp(ts.seconds, ts.nanos)
        if url.endswith("google.protobuf.Duration"):
            from google.protobuf import duration_pb2
            d = duration_pb2.Duration()
            value.object_value.Unpack(d)
            return Duration.from_nanos(d.seconds * 10**9 + d.nanos)
        raise OutsideSubsetError(f"object value {url}")
    raise OutsideSubsetError(f"{kind} values")


def tagged(value: Any) -> Any:
    """A hashable form that keeps CEL's kinds apart (1, 1u, 1.0 and true differ)."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Uint):
        return ("uint", int(value))
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("double", "nan" if math.isnan(value) else repr(value))
    if isinstance(value, TypeValue):
        return ("type", str(value))
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, bytes):
        return ("bytes", value)
    if isinstance(value, Timestamp):
        return ("timestamp", value.seconds, value.nanos)
    if isinstance(value, Duration):
        return ("duration", value.seconds, value.nanos)
    if isinstance(value, MapValue):
        return ("map", frozenset((tagged(k), tagged(v)) for k, v in value))
    if isinstance(value, list):
        return ("list", tuple(tagged(v) for v in value))
    if isinstance(value, CelError):
        return ("error",)
    raise TypeError(type(value))


# -- running one case --------------------------------------------------------------------------

def run_case(test: Any) -> tuple[str, str]:
    """('pass' | 'rejected' | 'wrong', detail)."""
    matcher = test.WhichOneof("result_matcher")
    if matcher in ("unknown", "any_unknowns") or test.check_only:
        return "rejected", f"{matcher or 'check_only'} results are outside the subset"
    try:
        declarations: dict[str, Any] = {}
        for decl in test.type_env:
            if decl.WhichOneof("decl_kind") != "ident":
                raise OutsideSubsetError("function declarations")
            try:
                declarations[decl.name] = hint_of_checked_type(decl.ident.type)
            except ValueError as exc:
                raise OutsideSubsetError(str(exc)) from None
        bindings = {name: python_value(v.value) for name, v in test.bindings.items()}
        for name in bindings:
            declarations.setdefault(name, None)
        if matcher == "value":
            expected = python_value(test.value)
        elif matcher == "typed_result":
            expected = python_value(test.typed_result.result)
        else:
            expected = CelError("any")
    except OutsideSubsetError as exc:
        return "rejected", str(exc)
    layout = Layout.of_variables(declarations)
    try:
        compiled = CelCompiler(layout, container=test.container or None).compile(test.expr)
    except (CelCompileError, RegexError) as exc:
        return "rejected", str(exc).split("\n")[0]
    try:
        result = compiled.evaluate(bindings)
    except Exception as exc:  # noqa: BLE001 - any failure of an accepted case is wrong
        return "wrong", f"raised {exc!r}"
    if tagged(result) != tagged(expected):
        return "wrong", f"got {result!r}, expected {expected!r}"
    return "pass", ""


def conformance_report(simple: Any) -> tuple[dict[str, Counter], list[str]]:
    report: dict[str, Counter] = {}
    wrong: list[str] = []
    for file in load_files(simple):
        counts = Counter()
        for section in file.section:
            for test in section.test:
                outcome, detail = run_case(test)
                counts[outcome] += 1
                if outcome == "wrong":
                    wrong.append(f"{file.name}/{section.name}/{test.name}: {test.expr!r} {detail}")
        report[file.name] = counts
    return report, wrong


def format_report(report: dict[str, Counter]) -> str:
    lines = [f"{'file':<14} {'cases':>6} {'pass':>6} {'rejected':>9} {'wrong':>6}"]
    total = Counter()
    for name, counts in report.items():
        n = sum(counts.values())
        total.update(counts)
        lines.append(f"{name:<14} {n:>6} {counts['pass']:>6} {counts['rejected']:>9} "
                     f"{counts['wrong']:>6}")
    n = sum(total.values())
    lines.append(f"{'total':<14} {n:>6} {total['pass']:>6} {total['rejected']:>9} "
                 f"{total['wrong']:>6}")
    return "\n".join(lines)


def test_conformance(conformance_modules) -> None:
    report, wrong = conformance_report(conformance_modules)
    print("\n" + format_report(report))
    total = Counter()
    for counts in report.values():
        total.update(counts)
    cases = sum(total.values())
    assert cases > 1200, f"only {cases} conformance cases found"
    assert not wrong, "wrong answers:\n" + "\n".join(wrong)
    assert total["rejected"] * 3 < cases, f"{total['rejected']} of {cases} cases rejected"


def main() -> None:
    """Print the per-file table (and every wrong or rejected case with -v)."""
    verbose = "-v" in sys.argv
    with tempfile.TemporaryDirectory(prefix="cel-spec-") as tmp:
        compile_conformance_protos(Path(tmp))
        sys.path.insert(0, tmp)
        simple = importlib.import_module("cel.expr.conformance.test.simple_pb2")
        importlib.import_module("cel.expr.conformance.proto2.test_all_types_pb2")
        importlib.import_module("cel.expr.conformance.proto3.test_all_types_pb2")
        report, wrong = conformance_report(simple)
        print(format_report(report))
        if verbose:
            for file in load_files(simple):
                for section in file.section:
                    for test in section.test:
                        outcome, detail = run_case(test)
                        if outcome != "pass":
                            print(f"{outcome:8} {file.name}/{section.name}: {test.expr!r}: "
                                  f"{detail}")
        for line in wrong:
            print("WRONG", line)


if __name__ == "__main__":
    main()
