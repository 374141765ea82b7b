"""What a loyalty run shows: the summary printed after the phase table, and the PNG.

The plot has three panels read side by side: throughput at saturation (the two Authorize pools
and Earn, each round a dot, the bar their mean), latency at one fixed offered rate for the two
pools, and server CPU per request split into payauth's processes and its Redis; the headline
ratio is in the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {"without_loyalty": "Authorize\nwithout loyalty", "with_loyalty":
          "Authorize\nwith loyalty", "earn": "Loyalty.Earn"}
COLOURS = {"without_loyalty": "tab:gray", "with_loyalty": "tab:blue", "earn": "tab:orange"}


def summary(doc: dict[str, Any]) -> str:
    """The headline figures of a run."""
    a, cpu, lat = doc["authorize_rps"], doc["cpu_us_per_request_at_saturation"], doc[
        "latency_ms"]
    lo, hi = lat["without_loyalty"], lat["with_loyalty"]
    c = doc["config"]
    lines = [
        f"{'':34}{'without loyalty':>16}{'with loyalty':>14}{'Earn':>10}",
        f"{'saturation, mean of rounds (/s)':34}{a['without_loyalty']:>16.0f}"
        f"{a['with_loyalty']:>14.0f}{doc['earn_rps']:>10.0f}",
        f"{'server CPU/request (us) w+redis':34}"
        + "".join(f"{_cpu(cpu.get(k, {})):>{w}}"
                  for k, w in (("without_loyalty", 16), ("with_loyalty", 14), ("earn", 10))),
        f"{'answers that earned points':34}"
        + "".join(f"{doc['earning'][k]['answers_that_earned_share']:>{w}.0%}"
                  for k, w in (("without_loyalty", 16), ("with_loyalty", 14), ("earn", 10))),
        f"{'open loop ' + str(lo['offered_rps']) + '/s: p50 ms':34}{lo['p50']:>16.2f}"
        f"{hi['p50']:>14.2f}",
        f"{'  p99 ms':34}{lo['p99']:>16.2f}{hi['p99']:>14.2f}",
        f"{'  p99.9 ms':34}{lo['p999']:>16.2f}{hi['p999']:>14.2f}",
        f"{'  server Authorize mean ms':34}{_num(lo['server_mean_ms']['rpc']):>16}"
        f"{_num(hi['server_mean_ms']['rpc']):>14}",
        f"{'  server commit mean ms':34}{_num(lo['server_mean_ms']['commit']):>16}"
        f"{_num(hi['server_mean_ms']['commit']):>14}",
        "",
        f"ratio with/without loyalty: {doc['ratio_with_to_without']} "
        f"(per round {', '.join(map(str, doc['ratio_per_round']))}, median "
        f"{doc['ratio_median_of_rounds']}); server CPU per Authorize "
        f"{doc['extra_server_cpu_us_per_authorize']:+} us "
        f"(x{doc['cpu_ratio_with_to_without']}); latency at "
        f"{lo['offered_rps']}/s: p50 {doc['extra_latency_ms']['p50']:+} ms, "
        f"p99 {doc['extra_latency_ms']['p99']:+} ms",
        "saturation rounds (/s, in the order run): " + "; ".join(
            f"{k.replace('_', ' ')} {' '.join(f'{v:.0f}' for v in doc['saturation_rounds_rps'][k])}"
            for k in ("without_loyalty", "with_loyalty", "earn")),
        f"Loyalty.Earn: {doc['earn_rps']:.0f}/s",
        f"run took {c['elapsed_seconds']:.0f} s (accounts and cards {c['load_seconds']:.0f} s, "
        f"program and members {c['enroll_seconds']:.0f} s)",
    ]
    return "\n".join(lines)


def _cpu(c: dict[str, float]) -> str:
    return f"{c['workers']:.0f}+{c['redis']:.0f}" if c else "-"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput, latency at a fixed rate and CPU per request, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 5), dpi=110)
    keys = ["without_loyalty", "with_loyalty", "earn"]
    means = [doc["authorize_rps"]["without_loyalty"], doc["authorize_rps"]["with_loyalty"],
             doc["earn_rps"]]
    bars = ax1.bar(range(3), means, color=[COLOURS[k] for k in keys], alpha=0.8)
    for i, k in enumerate(keys):
        rounds = doc["saturation_rounds_rps"][k]
        ax1.scatter([i] * len(rounds), rounds, color="black", s=12, zorder=3)
    ax1.bar_label(bars, fmt="%.0f")
    ax1.set_xticks(range(3), [LABELS[k] for k in keys], fontsize=8)
    ax1.set_ylabel("requests/s at saturation (closed loop)")
    ax1.set_title("throughput (bar: mean, dots: rounds)", fontsize=10)

    lat = doc["latency_ms"]
    pools = ["without_loyalty", "with_loyalty"]
    width = 0.38
    for j, pool in enumerate(pools):
        values = [lat[pool][p] for p in ("p50", "p99", "p999")]
        b = ax2.bar([x + (j - 0.5) * width for x in range(3)], values, width,
                    color=COLOURS[pool], label=LABELS[pool].replace("\n", " "))
        ax2.bar_label(b, fmt="%.1f", fontsize=7)
    ax2.set_xticks(range(3), ["p50", "p99", "p99.9"])
    ax2.set_ylabel("latency from scheduled send (ms)")
    ax2.set_title(f"Authorize, open loop at {lat['without_loyalty']['offered_rps']:.0f}/s",
                  fontsize=10)
    ax2.legend(fontsize=8)

    cpu = doc["cpu_us_per_request_at_saturation"]
    workers = [cpu[k].get("workers", 0.0) for k in keys]
    redis_cpu = [cpu[k].get("redis", 0.0) for k in keys]
    ax3.bar(range(3), workers, color=[COLOURS[k] for k in keys], alpha=0.8,
            label="payauth processes")
    top = ax3.bar(range(3), redis_cpu, bottom=workers, color="tab:red", alpha=0.5,
                  label="Redis")
    ax3.bar_label(top, labels=[f"{w + r:.0f}" for w, r in zip(workers, redis_cpu,
                                                                strict=True)])
    ax3.set_xticks(range(3), [LABELS[k] for k in keys], fontsize=8)
    ax3.set_ylabel("server CPU per request at saturation (us)")
    ax3.set_title("server CPU per request", fontsize=10)
    ax3.legend(fontsize=8, loc="lower right")

    m, c = doc["machine"], doc["config"]
    fig.suptitle(
        f"payauth loyalty: {c['program']['earning_rules']} earning rules, "
        f"{c['program']['challenges']} challenges, {c['program']['tiers']} tiers; "
        f"{c['workers']} workers, {m['cores']} cores, {m['date']}\n"
        f"Authorize with/without loyalty {doc['ratio_with_to_without']}, "
        f"Earn {doc['earn_rps']:.0f}/s", fontsize=10)
    for ax in (ax1, ax2, ax3):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
