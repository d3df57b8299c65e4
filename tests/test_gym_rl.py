"""stable-baselines3 on quoteforge.gym (the optional ``rl`` extra): SB3's own checker
accepts the environment, PPO trains on it (also on SB3's vectorised wrapper) and its
policy plays whole episodes. Skipped when stable-baselines3 is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason='needs pip install "quoteforge[rl]"')

from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

from quoteforge.gym import ENV_ID, MarketMakingEnv

SIM = Path(__file__).resolve().parent.parent / "examples" / "gym_sim.yaml"


def test_ppo_trains_on_the_environment_and_plays_an_episode() -> None:
    env = MarketMakingEnv(SIM, episode_steps=16, inventory_penalty=0.02)
    try:
        check_env(env, warn=True)
        model = PPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=2, seed=0, device="cpu")
        model.learn(total_timesteps=64)
        assert model.num_timesteps == 64
        obs, _ = env.reset(seed=3)
        steps, done = 0, False
        info: dict[str, Any] = {}
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            assert env.action_space.contains(action.astype(np.float32))
            obs, _, done, _, info = env.step(action)
            steps += 1
        assert steps == 16 and info["stop_reason"] == "episode length reached"
    finally:
        env.close()


def test_ppo_on_sb3s_vectorised_wrapper() -> None:
    import quoteforge.gym  # noqa: F401  (registers the id)

    vec = make_vec_env(
        ENV_ID, n_envs=2, seed=11, env_kwargs={"manifest": str(SIM), "episode_steps": 8}
    )
    try:
        model = PPO("MlpPolicy", vec, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=32)
        assert model.num_timesteps == 32
    finally:
        vec.close()
