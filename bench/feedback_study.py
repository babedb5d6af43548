"""The feedback-loop study, with and without exploration, as a report with plots.

    aisle bench feedback-study --data STORE --rounds 5 --sessions 1500 --out bench/results/feedback-study

Runs `builder.simulator.loop.feedback_loop` on the same store and seed once per arm: the served
settings (exploration slots [4, 11], new items only), the same slots also open to rarely shown
older candidates (`explore_underexposed = 20`), and no exploration (`explore_slots = []`). Each round
serves the current bundle to simulated shoppers, merges their events into the store and rebuilds.
Writes OUT/feedback.json (every round of both arms, machine and commit), OUT/report.md and two
SVG line charts: impression Gini and catalog coverage by round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import msgspec

from bench.environment import environment

ARMS: dict[str, str] = {
    "exploration": "",  # the served defaults: explore_slots = [4, 11], new items only
    # 20: about the synthetic store's median impressions per item over its 60-day log
    "exploration + rarely shown": "[rerank]\nexplore_underexposed = 20\n",
    "no exploration": "[rerank]\nexplore_slots = []\n",
}


def line_chart(title: str, series: dict[str, list[float]], y_label: str, fmt: str = "{:.2f}") -> str:
    """A small standalone SVG: one polyline per series over rounds 0..n-1, with points and labels."""
    from builder.experiments.svg import nice_ticks

    width, height, left, right, top, bottom = 560, 300, 60, 150, 36, 40
    values = [v for vs in series.values() for v in vs]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 0.1
    ticks = nice_ticks(lo - pad, hi + pad)
    y0, y1 = ticks[0], ticks[-1]
    n = max(len(vs) for vs in series.values())
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * i / max(n - 1, 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - y0) / ((y1 - y0) or 1))

    body = [f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for t in ticks:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" font-size="11">{fmt.format(t)}</text>')
    for i in range(n):
        body.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11">{i}</text>')
    body.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle" font-size="12">round</text>')
    body.append(f'<text x="14" y="{top + plot_h / 2:.0f}" text-anchor="middle" font-size="12" '
                f'transform="rotate(-90 14 {top + plot_h / 2:.0f})">{y_label}</text>')  # fmt: skip
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for k, (name, vs) in enumerate(series.items()):
        c = colours[k % len(colours)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs))
        body.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{points}"/>')
        body += [f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{c}"/>' for i, v in enumerate(vs)]
        ly = top + 16 * k + 8
        body.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 30}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        body.append(f'<text x="{left + plot_w + 34}" y="{ly + 4}" font-size="11">{name}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{"".join(body)}</svg>\n')  # fmt: skip


def report(rounds: dict[str, list[dict]], meta: dict) -> str:
    lines = [
        "# Feedback-loop study",
        "",
        f"Store `{meta['data']}`, {meta['rounds']} rounds of {meta['sessions']} simulated sessions, seed {meta['seed']}; "
        "after each round but the last the engine's event log is merged into the store and a new bundle is built and "
        "swapped in. Impression Gini is over every catalog item (never shown = 0); coverage is the share of the catalog "
        f"shown at least once in the round. Commit {meta['environment'].get('commit')}, {meta['environment'].get('cpu')}.",
        "",
        "![impression Gini by round](gini.svg)",
        "",
        "![catalog coverage by round](coverage.svg)",
        "",
        "![revenue by round](revenue.svg)",
        "",
        "| arm | round | bundle | requests | CTR (clicks / impression) | purchases | revenue | impression Gini | coverage | distinct items |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, rs in rounds.items():
        for r in rs:
            lines.append(
                f"| {arm} | {r['round']} | {r['bundle']} | {r['requests']:,} | {r['ctr']:.4f} | {r['purchases']:,} | "
                f"{r['revenue']:,.2f} | {r['impression_gini']:.3f} | {r['catalog_coverage']:.1%} | {r['distinct_items_served']:,} |"
            )
    first = {arm: rs[0] for arm, rs in rounds.items()}
    last = {arm: rs[-1] for arm, rs in rounds.items()}
    lines += ["", "## What it shows", ""]
    for arm in rounds:
        lines.append(
            f"- {arm}: impression Gini {first[arm]['impression_gini']:.3f} → {last[arm]['impression_gini']:.3f}, "
            f"coverage {first[arm]['catalog_coverage']:.1%} → {last[arm]['catalog_coverage']:.1%}, "
            f"CTR {first[arm]['ctr']:.4f} → {last[arm]['ctr']:.4f}, revenue {first[arm]['revenue']:,.0f} → {last[arm]['revenue']:,.0f} "
            f"over {len(rounds[arm])} rounds."
        )
    lines += ["", f"Reproduce: `{meta['environment'].get('command')}`", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aisle bench feedback-study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic store (with truth/)")
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sessions", type=int, default=1500, help="simulated sessions per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-config", help="build config TOML (default: the defaults)")
    p.add_argument("--work", help="keep the work directories here (default: temporary)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--arm", action="append", choices=list(ARMS), help="run only this arm (repeatable; default: all)")
    a = p.parse_args(argv)
    from builder.config import load_build_config
    from builder.simulator.loop import feedback_loop

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_build_config(Path(a.build_config) if a.build_config else None)
    work_root = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="aisle-feedback-"))
    rounds: dict[str, list[dict]] = {}
    arms = {name: ARMS[name] for name in (a.arm or ARMS)}
    for arm, toml in arms.items():
        results = feedback_loop(Path(a.data), work_root / arm.replace(" ", "-"), a.rounds, a.sessions, toml, a.seed,
                                build_config=config, workers=a.workers, concurrency=a.concurrency)  # fmt: skip
        rounds[arm] = [msgspec.to_builtins(r) for r in results]
    meta = {"environment": environment(), "data": a.data, "rounds": a.rounds, "sessions": a.sessions, "seed": a.seed,
            "arms": arms}  # fmt: skip
    (out / "feedback.json").write_text(json.dumps({**meta, "results": rounds}, indent=2) + "\n")
    write_outputs(out, rounds, meta)
    print((out / "report.md").read_text())
    return 0


def write_outputs(out: Path, rounds: dict[str, list[dict]], meta: dict) -> None:
    """report.md and the plots from the rounds (also: `python -c` over a kept feedback.json)."""

    def series(key: str) -> dict[str, list[float]]:
        return {arm: [r[key] for r in rs] for arm, rs in rounds.items()}

    (out / "gini.svg").write_text(line_chart("Impression Gini by round", series("impression_gini"), "Gini"))
    (out / "coverage.svg").write_text(line_chart("Catalog coverage by round", series("catalog_coverage"), "share of catalog shown", fmt="{:.0%}"))
    (out / "revenue.svg").write_text(line_chart("Revenue by round", series("revenue"), "revenue", fmt="{:,.0f}"))
    (out / "report.md").write_text(report(rounds, meta))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
