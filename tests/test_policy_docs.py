"""Every example condition in docs/policy-language.md compiles to a bool over the context."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from payauth.core.cel_compiler import ProgramBuilder, decision_compiler

DOC = Path(__file__).resolve().parents[1] / "docs" / "policy-language.md"


def doc_examples() -> list[str]:
    examples: list[str] = []
    for block in re.findall(r"```cel\n(.*?)```", DOC.read_text(), re.S):
        current: list[str] = []
        for line in block.splitlines() + ["// end"]:
            if line.startswith("//") or not line.strip():
                if current:
                    examples.append("\n".join(current))
                current = []
            else:
                current.append(line)
    return examples


@pytest.mark.parametrize("condition", doc_examples())
def test_doc_example_compiles(condition: str) -> None:
    compiler = decision_compiler()
    compiler.lower_into(ProgramBuilder(compiler.layout), condition, result_type="bool")


def test_docs_have_examples() -> None:
    assert len(doc_examples()) >= 10
