"""What every benchmark here leaves behind: its JSON and PNG under benchmarks/results/ and
a printed table, and the machine they were measured on."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The processor's model name, as /proc/cpuinfo gives it ('' where it does not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def write_results(doc: dict[str, Any], out: Path, stem: str,
                  plot: Callable[[dict[str, Any], Path], Any],
                  summary: Callable[[dict[str, Any]], str]) -> None:
    """Write `<stem>.json` (whole or not at all) and `<stem>.png` under `out`, then print
    the table `summary` makes of the document: what every benchmark here leaves behind."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(json_path)
    png_path = out / f"{stem}.png"
    plot(doc, png_path)
    print()
    print(summary(doc))
    print(f"wrote {json_path} and {png_path}")
