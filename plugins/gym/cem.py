"""A linear policy trained by the cross-entropy method, with numpy only: a baseline
learner for ``MarketMakingEnv`` that needs no deep-learning library.

The policy is ``action = tanh(W · (obs / scale) + b)``. The cross-entropy method keeps a
Gaussian over ``(W, b)``; each iteration draws a population of candidates, scores each
by its mean return on the iteration's training seeds (the same seeds for every
candidate, so they are compared on the same market paths) and refits the Gaussian to
the best share of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

__all__ = [
    "CEMResult",
    "Episode",
    "FixedPolicy",
    "LinearPolicy",
    "episode_return",
    "evaluate",
    "run_episode",
    "train_cem",
]

Policy = Callable[[np.ndarray], np.ndarray]


class LinearPolicy:
    """``tanh(W · (obs / scale) + b)``; ``params`` is ``W`` (row-major) then ``b``."""

    def __init__(self, params: np.ndarray, obs_size: int, action_size: int, scale: Any = 1.0):
        params = np.asarray(params, dtype=np.float64)
        if params.shape != (self.size(obs_size, action_size),):
            raise ValueError(
                f"LinearPolicy: {self.size(obs_size, action_size)} parameters expected "
                f"({action_size}x{obs_size} weights and {action_size} biases), got "
                f"{params.shape}"
            )
        self.weights = params[: obs_size * action_size].reshape(action_size, obs_size)
        self.bias = params[obs_size * action_size :]
        self.scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (obs_size,))

    @staticmethod
    def size(obs_size: int, action_size: int) -> int:
        return obs_size * action_size + action_size

    @classmethod
    def of_action(cls, action: Any, obs_size: int) -> np.ndarray:
        """Parameters of the policy that always takes ``action`` (zero weights; the bias
        is the action's inverse tanh, kept inside (-1, 1))."""
        bias = np.arctanh(np.clip(np.asarray(action, dtype=np.float64), -0.995, 0.995))
        return np.concatenate([np.zeros(obs_size * bias.size), bias])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float64) / self.scale
        return np.tanh(self.weights @ x + self.bias).astype(np.float32)


class FixedPolicy:
    """The same action at every step (a fixed spread)."""

    def __init__(self, action: Any) -> None:
        self.action = np.asarray(action, dtype=np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.action


@dataclass(frozen=True)
class Episode:
    """One episode's summed reward, final PnL, fill count and largest position (base
    units, either way)."""

    total_reward: float
    pnl: float
    fills: int
    max_position: float


def run_episode(env: gymnasium.Env[Any, Any], policy: Policy, seed: int) -> Episode:
    """One episode of ``policy`` on ``env`` from ``reset(seed=seed)``."""
    obs, info = env.reset(seed=seed)
    total, largest = 0.0, 0.0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total += float(reward)
        largest = max(largest, abs(float(info.get("position", 0.0))))
        if terminated or truncated:
            return Episode(total, float(info.get("pnl", 0.0)), int(info.get("fills", 0)), largest)


def episode_return(env: gymnasium.Env[Any, Any], policy: Policy, seed: int) -> float:
    """The summed reward of one episode of ``policy`` on ``env`` from ``reset(seed=seed)``."""
    return run_episode(env, policy, seed).total_reward


def evaluate(env: gymnasium.Env[Any, Any], policy: Policy, seeds: Sequence[int]) -> np.ndarray:
    """The return of ``policy`` on each of ``seeds``."""
    return np.array([episode_return(env, policy, s) for s in seeds], dtype=np.float64)


@dataclass
class CEMResult:
    """The trained Gaussian's mean (the policy's parameters) and what each iteration
    scored: ``history[i]`` is ``(mean return of the elite, return of the mean)``."""

    params: np.ndarray
    std: np.ndarray
    history: list[tuple[float, float]] = field(default_factory=list)


def train_cem(
    env: gymnasium.Env[Any, Any],
    *,
    iterations: int = 10,
    population: int = 16,
    elite_share: float = 0.25,
    seeds_per_iteration: int = 2,
    init_std: float = 0.5,
    min_std: float = 0.05,
    scale: Any = 1.0,
    init_params: Any = None,
    seed: int = 0,
    seed_offset: int = 0,
    log: Callable[[str], None] | None = None,
) -> CEMResult:
    """Train a ``LinearPolicy`` on ``env`` by the cross-entropy method.

    The search starts from ``init_params`` (zeros when not given;
    ``LinearPolicy.of_action`` starts it from a fixed action). Training seeds are
    ``seed_offset, seed_offset + 1, ...``: hold out other seeds to evaluate. ``seed``
    seeds the method's own draws, so the same call trains the same policy.
    """
    if iterations < 1 or population < 2 or not 0 < elite_share <= 1 or seeds_per_iteration < 1:
        raise ValueError(
            "train_cem: iterations >= 1, population >= 2, 0 < elite_share <= 1 and "
            "seeds_per_iteration >= 1 are required"
        )
    obs_shape = env.observation_space.shape
    act_shape = env.action_space.shape
    assert obs_shape is not None and act_shape is not None
    obs_size, act_size = int(obs_shape[0]), int(act_shape[0])
    rng = np.random.default_rng(seed)
    size = LinearPolicy.size(obs_size, act_size)
    mean = np.zeros(size) if init_params is None else np.array(init_params, dtype=np.float64)
    if mean.shape != (size,):
        raise ValueError(f"train_cem: init_params must hold {size} numbers, got {mean.shape}")
    std = np.full(size, init_std)
    elite = max(2, round(population * elite_share))
    result = CEMResult(mean, std)
    next_seed = seed_offset
    for it in range(iterations):
        seeds = list(range(next_seed, next_seed + seeds_per_iteration))
        next_seed += seeds_per_iteration
        candidates = mean + std * rng.standard_normal((population, size))
        candidates[0] = mean  # the current mean competes too
        scores = np.array(
            [
                evaluate(env, LinearPolicy(c, obs_size, act_size, scale), seeds).mean()
                for c in candidates
            ]
        )
        best = candidates[np.argsort(scores)[::-1][:elite]]
        mean = best.mean(axis=0)
        std = np.maximum(best.std(axis=0), min_std)
        result.history.append((float(np.sort(scores)[::-1][:elite].mean()), float(scores[0])))
        if log is not None:
            log(
                f"iteration {it + 1}/{iterations}: elite mean return "
                f"{result.history[-1][0]:.3f}, previous mean's return {scores[0]:.3f}"
            )
    result.params, result.std = mean, std
    return result
