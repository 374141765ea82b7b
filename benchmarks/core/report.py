"""What a run shows: the printed table, the targets, and the PNG (horizontal bars, log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GROUP_TITLES = {
    "single": "one row per call, from Python (ns per decision)",
    "prep": "building a peer's input from the record, which its rules figure excludes "
            "(ns per decision)",
    "batch": "batch calls (ns per row)",
    "decision": "whole decision from the record: model + policy (ns per decision)",
    "decision batch": "whole decision, batch (ns per decision)",
}


def _ns(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e4:
        return f"{v / 1e3:.1f} us"
    if v >= 1e3:
        return f"{v / 1e3:.2f} us"
    return f"{v:.0f} ns"


def _rows(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    rows = []
    for name, t in doc["timings"].items():
        rows.append((t["group"], name, t))
    for name, t in doc["timings_combined"].items():
        rows.append((t["group"], name, t))
    return rows


def _versions(doc: dict[str, Any], t: dict[str, Any]) -> str:
    library = t.get("library", "payauth")
    return f"{library} {doc['versions'].get(library, '')}".strip()


def table(doc: dict[str, Any]) -> str:
    """The figures, grouped, each group sorted fastest first."""
    width = 52
    lines = []
    head = (f"{'contender':<{width}} {'median':>10} {'min':>10} {'IQR':>6} "
            f"{'x payauth':>9}  library")
    checks = doc["cross_check"]
    for group in ("single", "prep", "batch", "decision", "decision batch"):
        rows = sorted((r for r in _rows(doc) if r[0] == group), key=lambda r: r[2]["median_ns"])
        if not rows:
            continue
        lines.append(f"== {GROUP_TITLES[group]}")
        lines.append(head)
        lines.append("-" * len(head))
        for _, name, t in rows:
            ref = _reference(doc, name, group)
            rel = f"{t['median_ns'] / ref:.1f}x" if ref else ""
            check = checks.get(name.removesuffix(" batch"), {})
            flag = "" if check.get("ok", True) else "  WRONG ANSWERS"
            lines.append(f"{name:<{width}} {_ns(t['median_ns']):>10} {_ns(t['min_ns']):>10} "
                         f"{t['spread']:>5.0%} {rel:>9}  {_versions(doc, t)}{flag}")
        lines.append("")
    lines.append(f"C loop: {doc['ns_per_node']:.2f} ns per tree node visited (LightGBM model, "
                 f"{doc['workload']['nodes_visited_per_row']:.0f} nodes per row; XGBoost "
                 f"{doc['ns_per_node_xgboost']:.2f} ns); policy loop: "
                 f"{doc['ns_per_rule']:.1f} ns per rule evaluated")
    if doc["unavailable"]:
        lines.append("unavailable: " + "; ".join(f"{k}: {v}" for k, v in
                                                 doc["unavailable"].items()))
    if doc["wrong_answers"]:
        lines.append("wrong answers (not timed): " + "; ".join(
            f"{k}: {v}" for k, v in doc["wrong_answers"].items()))
    return "\n".join(lines)


def _reference(doc: dict[str, Any], name: str, group: str) -> float | None:
    """The payauth figure a contender is compared with (the 'x payauth' column)."""
    t = {**doc["timings"], **doc["timings_combined"]}
    if group in ("decision", "decision batch"):
        key = "payauth decision batch" if group == "decision batch" else "payauth decision"
        return t[key]["median_ns"] if key in t else None
    if group == "prep":
        return t["payauth fill: context"]["median_ns"]
    library = t[name].get("library", "payauth")
    if library in ("common-expression-language", "cel-expr-python", "cel-python",
                   "zen-engine"):
        return t["payauth policy"]["median_ns"]
    if library == "payauth":
        return None
    model = "xgboost" if "xgboost" in name else "lightgbm"
    key = f"payauth model ({model})" + (" batch" if group == "batch" else "")
    return t[key]["median_ns"] if key in t else None


def targets_text(doc: dict[str, Any]) -> str:
    lines = ["Targets (issue 6), single decision, measured side by side in this run:"]
    for t in doc["targets"]:
        status = "not measured" if t["met"] is None else "MET" if t["met"] else "NOT MET"
        unit = " ns" if "ns" in t["bound"] else "x"
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}{unit}"
        lines.append(f"  {status:<8} {t['target']}: {measured} (bound {t['bound']}; "
                     f"{t['detail']})")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Horizontal log-scale bars: one panel per group, payauth in its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("single", "batch", "decision", "decision batch")
              if any(r[0] == g for r in _rows(doc))]
    panels = []
    for g in groups:
        rows = sorted((r for r in _rows(doc) if r[0] == g), key=lambda r: -r[2]["median_ns"])
        panels.append((g, rows))
    heights = [max(1.2, 0.32 * len(rows) + 0.8) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    if len(panels) == 1:
        axes = [axes]
    for ax, (group, rows) in zip(axes, panels, strict=True):
        names = [r[1] for r in rows]
        values = [r[2]["median_ns"] for r in rows]
        low = [r[2]["median_ns"] - r[2]["p25_ns"] for r in rows]
        high = [r[2]["p75_ns"] - r[2]["median_ns"] for r in rows]
        colours = ["#d62728" if n.startswith("payauth") else "#1f77b4" for n in names]
        ax.barh(names, values, color=colours, xerr=[low, high], ecolor="#555555",
                capsize=2)
        ax.set_xscale("log")
        ax.set_title(GROUP_TITLES[group], fontsize=10, loc="left")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        for y, v in enumerate(values):
            ax.text(v, y, " " + _ns(v), va="center", fontsize=7)
        ax.set_xlim(min(values) / 2, max(values) * 8)
    axes[-1].set_xlabel("ns (log scale); bars: median of interleaved repeats, whiskers: IQR")
    m = doc["machine"]
    fig.suptitle(f"payauth decision core vs peers — {m['cpu']}, {m['cores']} cores, "
                 f"{doc['generated_at']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
