"""A simulated A/B study: serve a bundle with experiments, let simulated shoppers use it, analyse.

    aisle bench ab-study --data STORE --bundles ROOT --sessions 6000 --out bench/results/ab-study

Starts `aisle serve` (Granian, real workers) on a free 127.0.0.1 port with the experiments of
`--settings` (default: `DEFAULT_EXPERIMENTS` below) and, unless `--no-inventory`, binds the
simulator's inventory publisher so stock, prices and new SKUs change while it runs. Then
`aisle simulate` drives it and `aisle analyze` reads the engine's slate and event logs. Writes to
OUT: analysis.json, report.md and plots (from `aisle analyze`), simulation.json (the simulator's
summary) and study.json (machine, commit, commands, settings). The engine's state dir is a
temporary directory unless `--state` names one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.environment import environment

# Two experiments on disjoint halves of the shoppers, each against the served settings as control:
# MMR diversity on (λ 0.9, the default) vs off (λ 1: pure relevance), and exploration slots on (the
# default [4, 11]) vs none.
DEFAULT_EXPERIMENTS = """
[[experiments]]
name = "mmr"
traffic = 0.5
salt = "study-mmr"
variants = [{name = "on"}, {name = "off", mmr_lambda = 1.0}]

[[experiments]]
name = "explore"
traffic = 0.5
salt = "study-explore"
variants = [{name = "on"}, {name = "off", explore_slots = []}]
"""


def run_study(
    data: Path,
    bundles: Path,
    out: Path,
    *,
    sessions: int,
    settings_toml: str = DEFAULT_EXPERIMENTS,
    seed: int = 0,
    workers: int = 2,
    concurrency: int = 2,
    inventory: bool = True,
    state: Path | None = None,
) -> dict:
    from builder.experiments.analyze import analyze
    from builder.experiments.report import write_outputs
    from builder.simulator.loop import EngineProcess, free_port
    from builder.simulator.run import simulate
    from builder.simulator.world import World
    from engine.settings import load

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aisle-ab-")) if state is None else state.parent
    state_dir = state or work / "state"
    toml = settings_toml
    endpoints = None
    if inventory:
        endpoints = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
        toml = f'{settings_toml}\n[inventory]\nupdates_endpoint = "{endpoints[0]}"\nsnapshot_endpoint = "{endpoints[1]}"\n'
    settings_path = out / "settings.toml"
    settings_path.write_text(toml.strip() + "\n", encoding="utf-8")
    settings = load(settings_path)  # refuse a bad design before starting anything
    world = World.load(data)
    engine = EngineProcess(bundles, state_dir, toml, workers)
    try:
        if not inventory:
            engine.wait_ready()
        t0 = time.monotonic()
        summary = simulate(world, engine.url, sessions=sessions, seed=seed, concurrency=concurrency, inventory=endpoints,
                           ready_timeout_s=180.0)  # fmt: skip
        simulate_s = time.monotonic() - t0
    finally:
        engine.stop()
    t0 = time.monotonic()
    analysis = analyze(state_dir, settings)
    analyze_s = time.monotonic() - t0
    write_outputs(analysis, out)
    (out / "simulation.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
    study = {
        "environment": environment(),
        "data": str(data),
        "bundles": str(bundles),
        "sessions": sessions,
        "seed": seed,
        "workers": workers,
        "concurrency": concurrency,
        "inventory_feed": inventory,
        "simulate_s": round(simulate_s, 1),
        "analyze_s": round(analyze_s, 1),
        "requests": summary.requests,
        "requests_per_s": round(summary.requests / max(simulate_s, 1e-9), 1),
        "violations": summary.violations,
        "http_errors": summary.http_errors,
        "verdicts": {e.name: e.verdict for e in analysis.experiments},
    }
    (out / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    if state is None:
        shutil.rmtree(work, ignore_errors=True)
    return study


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aisle bench ab-study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic store (with truth/) the bundle was built from")
    p.add_argument("--bundles", required=True, help="bundle root holding `current`")
    p.add_argument("--out", required=True, help="directory for the report")
    p.add_argument("--sessions", type=int, default=4000)
    p.add_argument("--settings", help="engine settings TOML with the experiments (default: MMR on/off and exploration on/off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--no-inventory", action="store_true", help="no live inventory feed during the run")
    p.add_argument("--state", help="keep the engine's state dir here (default: a temporary one, removed)")
    a = p.parse_args(argv)
    toml = Path(a.settings).read_text() if a.settings else DEFAULT_EXPERIMENTS
    study = run_study(Path(a.data), Path(a.bundles), Path(a.out), sessions=a.sessions, settings_toml=toml, seed=a.seed,
                      workers=a.workers, concurrency=a.concurrency, inventory=not a.no_inventory,
                      state=Path(a.state) if a.state else None)  # fmt: skip
    print((Path(a.out) / "report.md").read_text().split("## Per variant")[0])
    print(json.dumps({k: study[k] for k in ("requests", "requests_per_s", "simulate_s", "violations", "http_errors")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
