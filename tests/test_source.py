"""The source itself: ruff clean, generated files never committed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_files_are_not_tracked() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    generated = [f for f in tracked if f.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", ".so"))
                 or (f.startswith("core_ext/") and f.endswith((".c", ".cpp")))]
    assert generated == []


def test_protos_pass_buf_lint() -> None:
    # STANDARD and COMMENTS rules, with the contract's exceptions listed in buf.yaml.
    buf = ROOT / "node_modules" / ".bin" / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
