"""What a run shows: the table printed as phases finish, the summary, and the PNG.

The plot puts every mode on one set of axes (latency against offered load, log y), so the
empty handler's curve is the floor the payauth curves are read against: the horizontal gap is
throughput lost to payauth's work, the vertical gap latency added by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = ("mode", "load", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms",
           "max ms", "lag p99", "n", "failed", "forks", "redis stall", "stolen",
           "cpu us/req srv+redis")
WIDTHS = (12, 13, 9, 10, 8, 8, 9, 8, 7, 7, 6, 5, 11, 6, 20)


def _line(values: tuple[str, ...]) -> str:
    return "  ".join(v.rjust(w) if i > 1 else v.ljust(w)
                     for i, (v, w) in enumerate(zip(values, WIDTHS, strict=True)))


def header() -> str:
    """The table's heading."""
    return _line(COLUMNS) + "\n" + "-" * (sum(WIDTHS) + 2 * (len(WIDTHS) - 1))


def row(phase: Any, server: str = "payauth") -> str:
    """One phase as a table row (`phase` is run.Phase; `server` the name of the server its
    mode ran on, whose CPU the last column shows)."""
    cpu = phase.cpu_us_per_request
    cpu_text = f"{cpu.get(server, 0.0):.0f}" + (f"+{cpu.get('redis', 0.0):.0f}"
                                                if server != "empty" else "")
    offered = "closed" if phase.offered_rps is None else f"{phase.offered_rps:.0f}"
    return _line((
        phase.mode, phase.level, offered, f"{phase.achieved_rps:.0f}", f"{phase.p50:.2f}",
        f"{phase.p99:.2f}", f"{phase.p999:.2f}", f"{phase.max:.1f}",
        "-" if phase.send_lag_ms is None else f"{phase.send_lag_ms['p99']:.2f}",
        str(phase.completed),
        str(phase.incomplete + phase.errors), str(phase.redis_forks),
        f"{max(phase.redis_stalls_ms.values())} ms" if phase.redis_stalls_ms else "-",
        "-" if phase.cpu_stolen_share is None else f"{100 * phase.cpu_stolen_share:.0f}%",
        cpu_text,
    ))


def _micros(figures: dict[str, Any]) -> str:
    """A meter's p50 / p99 / p99.9 / max, in whole µs as it recorded them."""
    return " / ".join(f"{figures[k]}" for k in ("p50", "p99", "p999", "max"))


def _latency_ms(entry: dict[str, Any]) -> str:
    """A level's p50 / p99 / p99.9 in ms."""
    return " / ".join(f"{entry[k]:.2f}" for k in ("p50", "p99", "p999"))


def wakeups(figures: dict[str, Any]) -> str:
    """The wake-up meter's figures (`benchmarks.e2e.wakeups`) on one line."""
    return (_micros(figures) + f" µs (p50 / p99 / p99.9 / max; {figures['samples']} wake-ups of "
            f"{figures['interval_ms']:g} ms sleeps)")


def fsyncs(figures: dict[str, dict[str, Any]]) -> str:
    """The fsync meter's figures (`benchmarks.e2e.fsyncs.measure_both`) on one line."""
    back, paused = figures["back_to_back"], figures["paused"]
    return (f"back to back {_micros(back)} µs, {paused['pause_ms']:g} ms apart "
            f"{_micros(paused)} µs "
            f"(p50 / p99 / p99.9 / max; {back['samples']} appends of {back['append_bytes']} "
            "bytes each way)")


def redis_stalls(phases: list[dict[str, Any]]) -> str:
    """For each kind of event Redis's latency monitor recorded, in how many of `phases` (as
    in the JSON) and the longest; "none" when it recorded nothing."""
    kinds: dict[str, list[int]] = {}
    for phase in phases:
        for kind, ms in phase.get("redis_stalls_ms", {}).items():
            kinds.setdefault(kind, []).append(ms)
    if not kinds:
        return "none"
    return ", ".join(f"{kind} in {len(ms)} of {len(phases)} phases, the longest {max(ms)} ms"
                     for kind, ms in sorted(kinds.items()))


def summary(doc: dict[str, Any]) -> str:
    """The headline figures of a run, as printed after the table."""
    sat = doc["saturation_rps"]
    r = doc["redis"]
    lines = [
        "saturation (closed loop): " + ", ".join(f"{m} {v:.0f}/s" for m, v in sat.items()),
        f"ratio authorize/empty: {doc['ratio_authorize_to_empty']}   "
        f"ratio stream/authorize: {doc['ratio_stream_to_authorize']}" + "".join(
            f"   ratio {name.replace('_to_', '/')}: {doc[f'ratio_{name}']}"
            for name in list(doc.get("ratio_rounds", {}))[2:]),
    ]
    rounds = doc.get("ratio_rounds", {})
    if any(len(v) > 1 for v in rounds.values()):
        lines[0] += " (medians of " + "; ".join(
            f"{m} {'/'.join(f'{x:.0f}' for x in v)}"
            for m, v in doc["saturation_rounds_rps"].items()) + ")"
        lines[1] += "   (medians of the rounds' ratios: " + "; ".join(
            f"{name.replace('_to_', '/')} {', '.join(f'{x:.3f}' for x in v)}"
            for name, v in rounds.items() if v) + ")"
    cpu = doc.get("cpu_us_per_request_at_saturation", {})
    if cpu:
        lines.append("server CPU per request at saturation (us): " + ", ".join(
            f"{m} {c['server']:.0f}" + (f" (workers {c['workers']:.0f} + redis {c['redis']:.0f})"
                                         if "workers" in c else "")
            for m, c in cpu.items()) + f"; empty/authorize {doc['cpu_ratio_authorize_to_empty']}")
    if doc.get("cpu_ratio_stream_to_authorize_rounds"):
        by_cpu = doc.get("cpu_ratio_stream_to_authorize")
        lines.append("server CPU per Authorize over per stream message, by round (the "
                     "stream/authorize ratio of a server with the cores to itself): " + ", ".join(
                         f"{r:.3f}" for r in doc["cpu_ratio_stream_to_authorize_rounds"])
                     + (f"; median {by_cpu['median']:.3f}, its {by_cpu['confidence']:.0%} "
                        f"interval {by_cpu['low']:.3f}-{by_cpu['high']:.3f}" if by_cpu else ""))
    own = doc.get("payauth_own_us_per_request")
    if own:
        lines.append("payauth's own worker CPU per request (its workers' less the empty "
                     "handler's for the same kind of call, us): "
                     + ", ".join(f"{m} {v:.0f}" for m, v in own.items()))
    switches = doc.get("switches_per_request_at_saturation")
    if switches:
        lines.append("context switches per request at saturation (server / redis / clients): "
                     + ", ".join(f"{m} " + " / ".join(
                         f"{c[k]:.1f}" if k in c else "-" for k in ("server", "redis", "clients"))
                         for m, c in switches.items()))
    stolen = doc.get("cpu_stolen_share", {})
    if stolen.get("median") is not None:
        again = doc.get("config", {}).get("phases_measured_again", 0)
        lines.append(f"CPU stolen by the hypervisor during the phases: median "
                     f"{100 * stolen['median']:.0f} %, worst {100 * stolen['max']:.0f} %"
                     + (f" ({again} phases measured again for more than "
                        f"{100 * doc['config']['max_stolen']:.0f} % stolen, left out)"
                        if again else ""))
    threshold = doc.get("config", {}).get("redis_stall_threshold_ms")
    if threshold:
        lines.append(f"Redis's latency monitor (its main thread held {threshold} ms or more): "
                     + redis_stalls([p for p in doc.get("phases", [])
                                     if not p.get("superseded")]))
    if "round_trips_per_authorize" in r:
        lines.append(
            f"Redis per authorization ({r['authorizations']} decisions): "
            f"{r['round_trips_per_authorize']} round trips counted by payauth "
            f"(read {r['read_pipelines_per_authorize']} + commit {r['commits_per_authorize']}), "
            f"{r['redis_socket_reads_per_authorize']} socket reads seen by Redis, "
            f"{r['commands_per_authorize']} commands (FCALL {r['fcalls_per_authorize']})")
        means = ", ".join(f"{k} {v} ms" for k, v in r["server_mean_ms"].items() if v is not None)
        lines.append(f"server-side means: {means}")
        by_name = ", ".join(f"{k} {v}" for k, v in r["commands_by_name_per_authorize"].items())
        lines.append(f"commands per authorization by name: {by_name}")
        in_commands = ", ".join(f"{k} {v}" for k, v in r["redis_command_us_per_authorize"].items())
        lines.append(f"Redis µs per authorization inside commands (its clock, so a command "
                     f"preempted on a busy machine counts long; FCALL's includes the commands "
                     f"its function runs): {in_commands}")
    for what, key, text in (("wake-up lateness of a sleeping process", "wakeup_us", wakeups),
                            ("fdatasync of an append to the AOF's disk", "fsync_us", fsyncs)):
        idle = doc.get(key, {})
        if idle.get("idle"):
            lines.append(f"{what}, nothing driven: before the phases {text(idle['idle'])}"
                         + (f"; after them {text(idle['idle_after_phases'])}"
                            if idle.get("idle_after_phases") else ""))
    floor = doc.get("latency_floor_ms")
    if floor and floor.get("low_rate"):
        low = floor["low_rate"]
        lines.append(
            f"latency at {low['level']} (a request seldom meets another): authorize "
            f"{_latency_ms(low['authorize'])} ms (p50 / p99 / p99.9); the empty handler "
            f"{_latency_ms(low['empty'])} ms"
            + (f", empty_redis {_latency_ms(low['empty_redis'])} ms"
               if "empty_redis" in low else ""))
    if floor:
        lines.append(
            f"latency at Authorize's 50 % ({floor['offered_rps']:.0f}/s offered): authorize "
            f"{_latency_ms(floor['authorize'])} ms (p50 / p99 / p99.9); the empty handler at "
            f"the same load {_latency_ms(floor['empty'])} ms"
            + (f", empty_redis {_latency_ms(floor['empty_redis'])} ms"
               if "empty_redis" in floor else ""))
        late = [floor[name].get("wakeup_us") for name in ("authorize", "empty")]
        if None not in late:
            lines.append(f"wake-up lateness of a sleeping process at that load: authorize "
                         f"{wakeups(late[0])}; the empty handler {wakeups(late[1])}")
        busy = [floor[name].get("cores_busy") for name in ("authorize", "empty")]
        if None not in busy:
            lines.append(f"cores busy at that load (servers, Redis and clients): authorize "
                         f"{busy[0]:.2f}, the empty handler {busy[1]:.2f}, of "
                         f"{doc['machine']['cores']}")
        stalls = floor["authorize"].get("stalls")
        if stalls:
            gc_ms, gc_n = stalls.get("gc_ms", {}), stalls.get("gc_collections", {})
            lines.append(
                "payauth's event loops at that load: probe lag p99 <= "
                f"{stalls.get('loop_lag_p99_ms_at_most')} ms, worst <= "
                f"{stalls.get('loop_lag_worst_ms_at_most')} ms; garbage collections "
                + ", ".join(f"gen {g} {gc_n.get(g, 0)} ({gc_ms.get(g, 0)} ms)" for g in "012")
                + f", the longest <= {stalls.get('gc_worst_ms_at_most')} ms")
            inside = stalls.get("server_p99_ms_at_most", {})
            lines.append("p99 inside payauth at that load (its histograms' bucket bounds): "
                         + ", ".join(f"{k} <= {v} ms" for k, v in inside.items() if v))
    lines.append(f"run took {doc['config']['elapsed_seconds']:.0f} s (data load "
                 f"{doc['config']['load_seconds']:.0f} s)")
    rounds = doc.get("target_rounds", {})
    intervals = doc.get("target_intervals", {})

    def rounds_and_interval(target: str) -> str:
        if target not in rounds:
            return ""
        met, total = rounds[target]
        text = f" ({met} of {total} rounds"
        i = intervals.get(target)
        if i and i["verdict"] == "too few rounds":
            text += "; too few rounds for the median's interval"
        elif i:
            text += (f"; the median's {i['confidence']:.0%} interval {i['low']:.3f}-"
                     f"{i['high']:.3f}: {i['verdict']}")
        return text + ")"

    lines.append("targets: " + ", ".join(
        f"{k}={'yes' if v else 'NO'}{rounds_and_interval(k)}"
        for k, v in doc["targets"].items()))
    reach = latency_reach(doc)
    if reach:
        lines.append(reach)
    return "\n".join(lines)


# How the summary names the floors under Authorize's latency.
_FLOOR_NAMES = {"empty": "the empty handler", "empty_redis": "empty_redis"}


def latency_reach(doc: dict[str, Any]) -> str:
    """The latency targets against the floors under them (`targets.latency_target_floor`),
    one line; empty when the run had no floor."""
    verdicts = doc.get("latency_target_floor") or {}
    low = (doc.get("latency_floor_ms") or {}).get("low_rate")
    parts = []
    for target, v in verdicts.items():
        floors = ", ".join(f"{_FLOOR_NAMES.get(mode, mode)} {ms:.2f} ms"
                           for mode, ms in v["floors_ms"].items())
        alone = (f" (alone at {low['level']}: "
                 + ", ".join(f"{ms:.2f}" for ms in v["alone_ms"].values()) + " ms)"
                 if low and v["alone_ms"] else "")
        parts.append(f"{target}: authorize {v['authorize_ms']:.2f} ms; at the same load "
                     f"{floors}{alone}: {v['verdict']}")
    return ("latency targets against the floors under them: " + "; ".join(parts)
            if parts else "")


def plot(doc: dict[str, Any], path: Path) -> None:
    """p50/p99/p99.9 against offered load, one colour per mode, log latency axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    styles = {"p50": ("-", "o"), "p99": ("--", "s"), "p999": (":", "^")}
    colours = {"empty": "tab:gray", "authorize": "tab:blue", "stream": "tab:orange",
               "empty_stream": "tab:green", "empty_redis": "tab:purple",
               "authorize_b": "tab:cyan", "stream_b": "tab:red"}
    for mode, levels in doc["latency_ms"].items():
        points = sorted(levels.values(), key=lambda e: e["offered_rps"])
        xs = [p["offered_rps"] for p in points]
        for key, (line, marker) in styles.items():
            ax.plot(xs, [max(p[key], 0.001) for p in points], linestyle=line, marker=marker,
                    color=colours.get(mode), label=f"{mode} {key.replace('p999', 'p99.9')}")
        sat = doc["saturation_rps"].get(mode)
        if sat:
            ax.axvline(sat, color=colours.get(mode), alpha=0.25, linewidth=3)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, open loop); shaded: closed-loop saturation")
    ax.set_ylabel("latency from scheduled send (ms)")
    m = doc["machine"]
    ax.set_title(f"payauth end-to-end: {doc['config']['workers']} workers, {m['cores']} cores, "
                 f"{m['date']}\nauthorize/empty {doc['ratio_authorize_to_empty']}, "
                 f"stream/authorize {doc['ratio_stream_to_authorize']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
