"""quoteforge.gym: the Gymnasium environment over the sim and replay venues (issue #18).

Every test drives real runs of the example manifests in virtual time: the checker,
seeding, the documented reward, the order gate the agent's quotes pass, vectorised
use and the errors a bad manifest or action gets."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

from quoteforge.gym import ENV_ID, OBSERVATION_NAMES, GymManifestError, MarketMakingEnv
from quoteforge.journal import order_states
from quoteforge.manifest import ManifestError
from quoteforge.plugins.journal_sqlite import SqliteJournalParams, factory

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "gym_sim.yaml"
REPLAY = ROOT / "examples" / "gym_replay.yaml"
INVENTORY = OBSERVATION_NAMES.index("inventory")
TIME_LEFT = OBSERVATION_NAMES.index("time_left")


def manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data["run"].get("data"):
        data["run"]["data"] = str(ROOT / data["run"]["data"])
    return data


@pytest.fixture
def sim_env() -> Any:
    env = MarketMakingEnv(SIM, episode_steps=12, inventory_penalty=0.05)
    yield env
    env.close()


def rollout(env: Any, seed: int | None, actions: Iterable[np.ndarray]) -> list[tuple[Any, ...]]:
    obs, info = env.reset(seed=seed)
    steps: list[tuple[Any, ...]] = [(obs.tolist(), info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs.tolist(), reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return steps


@pytest.mark.parametrize("path", [SIM, REPLAY], ids=["sim", "replay"])
def test_the_environment_passes_gymnasiums_checker(path: Path) -> None:
    env = gymnasium.make(ENV_ID, manifest=manifest(path), episode_steps=6)
    try:
        check_env(env.unwrapped)  # with the spec, so it tries the ansi render mode too
    finally:
        env.close()


def rendered(env: MarketMakingEnv) -> str:
    text = env.render()
    assert text is not None  # render_mode="ansi"
    return text


def test_same_seed_same_trajectory_and_another_seed_another(sim_env: MarketMakingEnv) -> None:
    actions = np.random.default_rng(5).uniform(-1, 1, size=(12, 2)).astype(np.float32)
    first = rollout(sim_env, 11, actions)
    again = rollout(sim_env, 11, actions)
    other = rollout(sim_env, 12, actions)
    assert first == again
    assert first != other
    assert first[-1][2] is True  # terminated at the episode length
    assert first[-1][4]["stop_reason"] == "episode length reached"
    assert len(first) == 13
    assert first[-1][4]["fills"] > 0


def test_reset_without_a_seed_continues_the_seeded_generator() -> None:
    runs = []
    for _ in range(2):
        env = MarketMakingEnv(SIM, episode_steps=3)
        env.reset(seed=4)
        action = env.spread_action()
        runs.append([rollout(env, s, [action] * 3) for s in (None, None)])
        env.close()
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]


def test_reward_is_the_pnl_change_less_the_documented_inventory_penalty(
    sim_env: MarketMakingEnv,
) -> None:
    obs, info = sim_env.reset(seed=2)
    assert obs[TIME_LEFT] == 1.0 and obs[INVENTORY] == 0.0
    params = sim_env.agent_params
    pnl = info["pnl"]
    positions = []
    for step in range(1, 13):
        # Lean to buying, so the position and its penalty grow.
        obs, reward, _, _, info = sim_env.step(np.array([-1.0, -1.0], dtype=np.float32))
        q = info["position"] / params.order_size
        assert reward == pytest.approx(info["pnl"] - pnl - 0.05 * q * q, abs=1e-9)
        assert obs[INVENTORY] == pytest.approx(info["position"] / params.inventory_limit, abs=1e-6)
        assert obs[TIME_LEFT] == pytest.approx(1 - step / 12)
        pnl = info["pnl"]
        positions.append(info["position"])
    assert max(positions) > 0


def test_the_agents_quotes_pass_the_runs_risk_checks() -> None:
    data = manifest(SIM)
    data["risk"]["position"]["params"]["max_position"] = 0.1  # below the agent's own limit
    env = MarketMakingEnv(data, episode_steps=30, keep_runs=True)
    try:
        env.reset(seed=3)
        positions = []
        for _ in range(30):
            # Bid at the touch, ask far away and lowered: only buying happens.
            _, _, done, _, info = env.step(np.array([-1.0, -1.0], dtype=np.float32))
            positions.append(info["position"])
        assert done
        assert env.render() is None  # no render_mode: renders nothing
        assert max(positions) > 0.05  # it bought...
        assert max(positions) <= 0.1 + 1e-12  # ...but the risk chain stopped it at 0.1
        # The order manager journaled every order and fill, as for any strategy.
        (run_dir,) = env.run_root.glob("episode-*")
        records = list(factory(SqliteJournalParams(), run_dir).read())
        orders = order_states(records)
        assert orders and {o["strategy"] for o in orders.values()} == {"agent"}
        assert sum(r.kind == "fill" for r in records) == info["fills"] > 0
    finally:
        env.close()


def test_explicit_quotes_one_sided() -> None:
    env = MarketMakingEnv(SIM, episode_steps=25, action_mode="quotes", render_mode="ansi")
    try:
        assert env.action_space.shape == (4,)
        env.reset(seed=8)
        positions = []
        for _ in range(25):
            # Both sides near the mid, but no bid at all (size -1 is zero lots).
            _, _, _, _, info = env.step(np.array([-1.0, -1.0, -1.0, 1.0], dtype=np.float32))
            positions.append(info["position"])
        assert min(positions) < 0 and max(positions) <= 0
        assert rendered(env).startswith("t=25s mid=")
        assert f"position={positions[-1]:g}" in rendered(env)
    finally:
        env.close()


def test_a_replay_episode_ends_with_the_recording() -> None:
    env = MarketMakingEnv(manifest(REPLAY), episode_steps=1000, step_seconds=60)
    try:
        env.reset(seed=1)
        steps, done = 0, False
        info: dict[str, Any] = {}
        while not done:
            _, _, done, truncated, info = env.step(env.spread_action())
            assert not truncated
            steps += 1
        assert steps <= 7  # a six-minute recording
        assert "end of recorded data" in info["stop_reason"] or info["stop_reason"] == (
            "recording ended"
        )
        assert info["fills"] > 0
    finally:
        env.close()


def test_made_through_gymnasium_and_vectorised_sync_and_async() -> None:
    env = gymnasium.make(ENV_ID, manifest=str(SIM), episode_steps=4)
    assert isinstance(env.unwrapped, MarketMakingEnv)
    env.close()
    actions = np.array([[0.2, -0.5], [-0.6, 0.3]], dtype=np.float32)
    results = []
    for mode in ("sync", "async"):
        vec = gymnasium.make_vec(
            ENV_ID, num_envs=2, vectorization_mode=mode, manifest=str(SIM), episode_steps=4
        )
        assert isinstance(vec, (SyncVectorEnv, AsyncVectorEnv))
        try:
            obs, _ = vec.reset(seed=[21, 22])
            trail = [obs]
            for _ in range(4):
                obs, _, terminated, _, _ = vec.step(actions)
                trail.append(obs)
            assert obs.shape == (2, len(OBSERVATION_NAMES))
            assert terminated.all()
            results.append(np.stack(trail))
        finally:
            vec.close()
    np.testing.assert_array_equal(results[0], results[1])  # same seeds, same paths


async def test_stepped_from_inside_a_running_event_loop() -> None:
    """A notebook cell runs inside an event loop: the environment runs its own loop on a
    helper thread then, with the same results as outside."""
    env = MarketMakingEnv(SIM, episode_steps=4)
    try:
        inside = rollout(env, 9, [env.spread_action()] * 4)
    finally:
        env.close()
    outside = MarketMakingEnv(SIM, episode_steps=4)
    try:  # a thread of its own has no running loop
        steps = [outside.spread_action()] * 4
        assert inside == await asyncio.to_thread(rollout, outside, 9, steps)
    finally:
        outside.close()


def test_bad_actions_are_refused_by_name(sim_env: MarketMakingEnv) -> None:
    with pytest.raises(RuntimeError, match=r"call reset\(\) first"):
        sim_env.step(np.zeros(2, dtype=np.float32))
    sim_env.reset(seed=1)
    with pytest.raises(ValueError, match=r"shape \(2,\) \[half_spread, skew\], got shape \(3,\)"):
        sim_env.step(np.zeros(3))
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\], got \[1.5, 0.0\]"):
        sim_env.step([1.5, 0.0])
    with pytest.raises(ValueError, match=r"in \[-1, 1\], got \[nan, 0.0\]"):
        sim_env.step([float("nan"), 0.0])
    with pytest.raises(ValueError, match="must be 2 numbers"):
        sim_env.step("wide")
    sim_env.step([0.0, 0.0])  # the episode goes on after a refused action


def _without_agent(data: dict[str, Any]) -> None:
    data["strategies"] = {
        "mm": {
            "type": "pure_market_making",
            "exchange": "sim",
            "symbols": "BTC/USDT",
            "params": {"order_size": 0.05},
        }
    }


def _two_agents(data: dict[str, Any]) -> None:
    markets = data["exchanges"]["sim"]["params"]["markets"]
    markets["ETH/USDT"] = dict(markets["BTC/USDT"])
    data["strategies"]["agent2"] = copy.deepcopy(data["strategies"]["agent"])
    data["strategies"]["agent2"]["symbols"] = "ETH/USDT"


def _live(data: dict[str, Any]) -> None:
    data["run"]["mode"] = "live"


def _two_symbols(data: dict[str, Any]) -> None:
    market = data["exchanges"]["sim"]["params"]["markets"]["BTC/USDT"]
    data["exchanges"]["sim"]["params"]["markets"]["ETH/USDT"] = dict(market)
    data["strategies"]["agent"]["symbols"] = ["BTC/USDT", "ETH/USDT"]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (_without_agent, GymManifestError, r"exactly one strategy of type 'gym_agent', found 0 "
         r"\(strategies: mm \(pure_market_making\)\)"),
        (_two_agents, GymManifestError, "found 2"),
        (_live, GymManifestError, "run.mode is 'live'.*use mode sim .* or backtest"),
        (_two_symbols, GymManifestError, "must quote exactly one symbol, got 2"),
        (lambda d: d["strategies"]["agent"]["params"].update(inventory_limit=0.01),
         ManifestError, "inventory_limit"),
    ],
    ids=["no-agent", "two-agents", "live", "two-symbols", "bad-params"],
)  # fmt: skip
def test_a_bad_manifest_is_refused_with_what_to_change(
    change: Any, error: type[Exception], message: str
) -> None:
    data = manifest(SIM)
    change(data)
    with pytest.raises(error, match=message):
        MarketMakingEnv(data)


def test_bad_settings_and_sources_are_refused() -> None:
    with pytest.raises(ManifestError, match=r"no-such-manifest\.yaml"):
        MarketMakingEnv(ROOT / "no-such-manifest.yaml")
    with pytest.raises(GymManifestError, match="path or the manifest as a dict, got int"):
        MarketMakingEnv(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="episode_steps must be a whole number >= 1, got 0"):
        MarketMakingEnv(SIM, episode_steps=0)
    with pytest.raises(ValueError, match="action_mode must be one of spread_skew, quotes"):
        MarketMakingEnv(SIM, action_mode="prices")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inventory_penalty must be a finite number >= 0"):
        MarketMakingEnv(SIM, inventory_penalty=-1)
