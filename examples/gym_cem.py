"""Train a market-making policy on quoteforge's Gymnasium environment, numpy only.

A linear policy (action = tanh(W · obs / scale + b)) is trained by the cross-entropy
method on the simulated market of examples/gym_sim.yaml, then compared with the
fixed-spread baseline (the agent's own half_spread_bps, no skew) on held-out seeds
that training never saw::

    pip install "quoteforge[gym]"
    python examples/gym_cem.py                      # about a minute or two
    python examples/gym_cem.py --iterations 3 --population 8 --episode-steps 30

The reward is the PnL change minus an inventory penalty (docs/gym.md), so the policy
learns to lean its quotes against its position and to choose its spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

import quoteforge.gym
from quoteforge.gym.cem import FixedPolicy, LinearPolicy, run_episode, train_cem
from quoteforge.logs import configure_logging

HERE = Path(__file__).resolve().parent
#: Feature scales: basis points are divided by 10, the rest are already near [-1, 1].
SCALE = [10.0, 10.0, 1.0, 10.0, 1.0, 1.0]
#: Held-out seeds start here; training uses seeds from 0.
HELD_OUT_FROM = 1_000_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default=str(HERE / "gym_sim.yaml"))
    p.add_argument("--episode-steps", type=int, default=60)
    p.add_argument("--step-seconds", type=float, default=1.0)
    p.add_argument("--inventory-penalty", type=float, default=0.02)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--seeds-per-iteration", type=int, default=2)
    p.add_argument("--held-out", type=int, default=10, help="held-out seeds to compare on")
    p.add_argument("--init-std", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0, help="seed of the method's own draws")
    p.add_argument("--quiet", action="store_true", help="print only the comparison")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, compare on held-out seeds, print; returns both policies' returns."""
    args = parse(argv)
    configure_logging("WARNING")  # one run per episode: keep the runs' info lines out
    env = gymnasium.make(
        quoteforge.gym.ENV_ID,
        manifest=args.manifest,
        episode_steps=args.episode_steps,
        step_seconds=args.step_seconds,
        inventory_penalty=args.inventory_penalty,
    )
    say = (lambda text: None) if args.quiet else print
    try:
        obs_size = len(quoteforge.gym.OBSERVATION_NAMES)
        baseline = FixedPolicy(env.unwrapped.spread_action())  # type: ignore[attr-defined]
        result = train_cem(
            env,
            # Start from the baseline: the method improves on the fixed spread.
            init_params=LinearPolicy.of_action(baseline.action, obs_size),
            init_std=args.init_std,
            iterations=args.iterations,
            population=args.population,
            seeds_per_iteration=args.seeds_per_iteration,
            scale=SCALE,
            seed=args.seed,
            log=say,
        )
        trained = LinearPolicy(result.params, obs_size, 2, SCALE)
        held_out = list(range(HELD_OUT_FROM, HELD_OUT_FROM + args.held_out))
        trained_runs = [run_episode(env, trained, s) for s in held_out]
        baseline_runs = [run_episode(env, baseline, s) for s in held_out]
    finally:
        env.close()
    trained_returns = np.array([e.total_reward for e in trained_runs])
    baseline_returns = np.array([e.total_reward for e in baseline_runs])
    wins = int(np.sum(trained_returns > baseline_returns))
    print(f"held-out seeds {held_out[0]}..{held_out[-1]} ({len(held_out)} episodes each), means:")
    print("                         return       PnL    fills  max |position|")
    for name, runs in (
        ("trained linear policy", trained_runs),
        ("fixed-spread baseline", baseline_runs),
    ):
        print(
            f"  {name}  {np.mean([e.total_reward for e in runs]):9.3f} "
            f"{np.mean([e.pnl for e in runs]):9.3f} {np.mean([e.fills for e in runs]):8.1f} "
            f"{np.mean([e.max_position for e in runs]):15.4f}"
        )
    print(f"  the trained policy's return was higher on {wins} of {len(held_out)} seeds")
    weights = np.round(trained.weights, 3).tolist()
    say(
        "policy weights (rows: half spread, skew; columns: "
        f"{', '.join(quoteforge.gym.OBSERVATION_NAMES)}): {weights}"
    )
    return {
        "trained": trained_returns,
        "baseline": baseline_returns,
        "trained_runs": trained_runs,
        "baseline_runs": baseline_runs,
        "params": result.params,
        "history": result.history,
    }


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out["trained"].mean() > out["baseline"].mean() else 1)
