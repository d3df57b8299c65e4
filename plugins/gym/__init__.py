"""quoteforge.gym: a Gymnasium environment over the simulated and replay venues.

``import quoteforge.gym`` registers ``quoteforge/MarketMaking-v0`` with Gymnasium::

    import gymnasium
    import quoteforge.gym

    env = gymnasium.make("quoteforge/MarketMaking-v0", manifest="examples/gym_sim.yaml")

See docs/gym.md. The package also registers the ``gym_agent`` strategy (the
``strategy_gym_agent`` plugin), the strategy an environment's actions drive.
"""

from __future__ import annotations

import gymnasium

from quoteforge.gym.env import (
    ACTION_MODES,
    AGENT_TYPE,
    EpisodeDriver,
    GymManifestError,
    MarketMakingEnv,
)
from quoteforge.gym.features import OBSERVATION_NAMES, BookFeatures
from quoteforge.gym.strategy_gym_agent import GymAgent, GymAgentParams, QuotePlan

__all__ = [
    "ACTION_MODES",
    "AGENT_TYPE",
    "ENV_ID",
    "OBSERVATION_NAMES",
    "BookFeatures",
    "EpisodeDriver",
    "GymAgent",
    "GymAgentParams",
    "GymManifestError",
    "MarketMakingEnv",
    "QuotePlan",
]

#: The Gymnasium id of ``MarketMakingEnv``.
ENV_ID = "quoteforge/MarketMaking-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="quoteforge.gym.env:MarketMakingEnv")
