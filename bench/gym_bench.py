"""Learning-environment speed: steps per second of ``quoteforge.gym.MarketMakingEnv``
against the plain backtest of the same manifest, measured in the same run.

Both sides run the same manifest with the same seed over the same virtual time:

  plain run     ``quoteforge run`` of the manifest (``run_manifest``): the gym_agent
                strategy keeps its fixed plan for ``steps x step_seconds`` of virtual
                time (a replay ends earlier when its recording does)
  environment   episodes of ``steps`` steps, each action the same fixed plan
                (``spread_action()``), so the runs place the same quotes; the extra time
                is what stepping costs: one event-loop round trip, a plan, an
                observation and a reward per step, and the episode's start and stop
  random        the same with uniformly random actions (a policy early in training)

Both sides are warmed up first. Prints wall times, steps per second, the environment's
time over the plain run's (the ratio) and both fill counts, and writes
``bench/results/gym_bench.json``.

    python bench/gym_bench.py                                 # examples/gym_sim.yaml
    python bench/gym_bench.py --manifest examples/gym_replay.yaml --steps 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quoteforge.engine import run_manifest
from quoteforge.gym import MarketMakingEnv
from quoteforge.logs import configure_logging
from quoteforge.manifest import load_manifest
from quoteforge.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def plain_run(manifest: Path, seconds: float, seed: int, run_dir: Path) -> tuple[float, int]:
    registry = load_registry()
    loaded = load_manifest(
        manifest,
        registry,
        overrides=[
            f"run.duration={seconds}s",
            f"run.seed={seed}",
            "run.watch_manifest=false",
            "report.html=false",
            "report.png=false",
        ],
    )
    start = time.perf_counter()
    run = asyncio.run(
        run_manifest(
            loaded, registry, run_dir=run_dir, manifest_path=manifest, install_signals=False,
            progress_bar=False,
        )
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    return elapsed, sum(int(r["fill_count"]) for r in run.summary_rows())


def episodes(env: MarketMakingEnv, count: int, seed: int, random_actions: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    fixed = env.spread_action()
    steps = fills = 0
    start = time.perf_counter()
    for episode in range(count):
        env.reset(seed=seed + episode)
        done = False
        info: dict[str, Any] = {}
        while not done:
            action = rng.uniform(-1, 1, size=2).astype(np.float32) if random_actions else fixed
            _, _, done, _, info = env.step(action)
            steps += 1
        fills += int(info["fills"])
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "steps": steps, "fills": fills, "steps_per_s": steps / elapsed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=ROOT / "examples" / "gym_sim.yaml")
    p.add_argument("--steps", type=int, default=300, help="steps per episode")
    p.add_argument("--step-seconds", type=float, default=1.0)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gym_bench.json")
    args = p.parse_args(argv)
    configure_logging("WARNING")
    seconds = args.steps * args.step_seconds
    with tempfile.TemporaryDirectory(prefix="gym-bench-") as tmp:
        root = Path(tmp)
        # Warm up both sides (imports, first-run caches) before anything is timed.
        plain_run(args.manifest, 5 * args.step_seconds, args.seed, root / "warm-up")
        warm = MarketMakingEnv(
            args.manifest, episode_steps=5, step_seconds=args.step_seconds, run_root=root / "w"
        )
        episodes(warm, 1, args.seed, random_actions=False)
        warm.close()
        plain = [
            plain_run(args.manifest, seconds, args.seed + i, root / f"plain-{i}")
            for i in range(args.episodes)
        ]
        env = MarketMakingEnv(
            args.manifest,
            episode_steps=args.steps,
            step_seconds=args.step_seconds,
            run_root=root / "env",
        )
        try:
            fixed = episodes(env, args.episodes, args.seed, random_actions=False)
            rand = episodes(env, args.episodes, args.seed, random_actions=True)
        finally:
            env.close()
    plain_s = sum(t for t, _ in plain)
    plain_fills = sum(f for _, f in plain)
    result = {
        "manifest": _shown(args.manifest),
        "episodes": args.episodes,
        "steps_per_episode": args.steps,
        "step_seconds": args.step_seconds,
        "plain_run": {"seconds": plain_s, "fills": plain_fills},
        "env_fixed_plan": fixed,
        "env_random_actions": rand,
        "ratio_fixed_over_plain": fixed["seconds"] / plain_s,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    print(
        f"{args.manifest.name}: {args.episodes} episodes of {args.steps} steps "
        f"of {args.step_seconds:g}s"
    )
    print(f"  plain run           {plain_s:7.3f} s   {plain_fills:6d} fills")
    for name, row in (("env, fixed plan", fixed), ("env, random actions", rand)):
        print(
            f"  {name:19s} {row['seconds']:7.3f} s   {row['fills']:6d} fills   "
            f"{row['steps_per_s']:8.0f} steps/s   x{row['seconds'] / plain_s:.2f} of the plain run"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
