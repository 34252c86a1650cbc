"""``--plot OUT.png``: titan_zmq's throughput and latency against the ceiling and the peers (matplotlib)."""

from __future__ import annotations

from typing import Any


def bars(res: dict[str, Any]) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(label, jobs/s) and (label, p50 ms) pairs from a run's figures, in the order they are drawn."""
    fig = res["figures"]
    tp: list[tuple[str, float]] = []
    lat: list[tuple[str, float]] = []
    noop = fig.get("noop")
    if noop:
        tp.append(("ceiling\n(raw pyzmq)", noop["ceiling"]["msgs_per_s"]))
        lat.append(("ceiling\n(raw pyzmq)", noop["ceiling"]["rtt_p50_ms"]))
        for policy in ("off", "everysec", "always"):
            if policy in noop:
                label = "titan" if policy == "off" else f"titan\n{policy}"
                tp.append((label, noop[policy]["jobs_per_s"]))
                lat.append((label, noop[policy]["p50_ms"]))
    for name, peer in (fig.get("peers") or {}).items():
        if "jobs_per_s" in peer:
            tp.append((name, peer["jobs_per_s"]))
            lat.append((name, peer["latency_p50_ms"]))
    return tp, lat


def draw(res: dict[str, Any], out: str) -> None:
    """Two bar charts side by side; throughput on a log scale (the peers are orders of magnitude apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp, lat = bars(res)
    if not tp:
        raise ValueError("nothing to plot: run the noop or peers scenario")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colours = ["#888888" if "ceiling" in k else "#1f77b4" if k.startswith("titan") else "#ff7f0e" for k, _ in tp]
    left.bar([k for k, _ in tp], [v for _, v in tp], color=colours)
    left.set_yscale("log")
    left.set_ylabel("no-op jobs (messages) per second, log scale")
    left.set_title("throughput, pipelined")
    right.bar([k for k, _ in lat], [v for _, v in lat], color=colours)
    right.set_ylabel("milliseconds")
    right.set_title("one job at a time, p50 latency")
    for ax, pairs, fmt in ((left, tp, "{:,.0f}"), (right, lat, "{:.2f}")):
        for i, (_, v) in enumerate(pairs):
            ax.annotate(fmt.format(v), (i, v), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    m = res["machine"]
    fig.suptitle(f"titan_zmq vs ceiling and peers: nproc={m['nproc']}, python {m['python']}, "
                 f"{'quick' if res['config'].get('quick') else 'full'} run")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
