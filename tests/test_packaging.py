"""The wheel carries the generated API modules and the compiled core under `payauth`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_builds_with_protos_and_core(tmp_path: Path) -> None:
    # --no-isolation: the build requirements are already in the test environment.
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                    "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("payauth-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("authorizer", "issuer", "loyalty", "common", "events", "lifecycle",
                   "policy"):
        assert f"payauth/v1/{module}_pb2.py" in names
        assert f"payauth/v1/{module}.proto" in names
    assert "payauth/v1/authorizer_pb2_grpc.py" in names
    assert any(n.startswith("payauth/core/keyed_hash") and n.endswith(".so") for n in names)
    assert "payauth/server/functions/payauth.lua" in names
    assert "payauth/clients/__init__.py" in names
    assert not any(n.startswith(("server/", "clients/", "core_ext/", "tests/")) for n in names)
