"""``MarketMakingEnv``: a Gymnasium environment over a quoteforge run in virtual time.

Each episode is a real ``quoteforge.engine.Run`` of the manifest (a ``sim`` or a
``replay`` venue) with its own seed. The run is driven through its ``driver=``
extension point: the environment moves the run's virtual clock one step per action,
and the action becomes the plan of the manifest's ``gym_agent`` strategy, whose quotes
pass the engine's one order gate (kill/halt, breakers, risk, execution policy, order
manager) like any strategy's. docs/gym.md defines the observation, action and reward.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import shutil
import tempfile
import weakref
from collections.abc import Coroutine, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import gymnasium
import numpy as np
from gymnasium import spaces

from quoteforge.clock import NS, SimClock
from quoteforge.engine import Run
from quoteforge.gym.features import OBSERVATION_HIGH, OBSERVATION_LOW, BookFeatures
from quoteforge.gym.strategy_gym_agent import GymAgent, QuotePlan
from quoteforge.manifest import LoadedManifest, load_manifest
from quoteforge.registry import PluginRegistry, load_registry

__all__ = [
    "ACTION_MODES",
    "AGENT_TYPE",
    "EpisodeDriver",
    "GymManifestError",
    "MarketMakingEnv",
]

#: The strategy type the environment trades through (quoteforge.gym.strategy_gym_agent).
AGENT_TYPE = "gym_agent"
#: ``spread_skew``: [half spread, skew]; ``quotes``: [bid distance, ask distance, bid
#: size, ask size]; every entry in [-1, 1] (docs/gym.md).
ACTION_MODES = ("spread_skew", "quotes")
_ACTION_NAMES = {
    "spread_skew": "[half_spread, skew]",
    "quotes": "[bid_distance, ask_distance, bid_size, ask_size]",
}
_VIRTUAL_MODES = ("sim", "backtest")
#: How long a new episode may wait for a two-sided book before it gives up.
_WARMUP_S = 60.0
_T = TypeVar("_T")


class GymManifestError(ValueError):
    """The manifest cannot make an environment; the message says what to change."""


class EpisodeDriver:
    """The ``RunDriver`` of one episode: the run waits in ``drive`` while the
    environment moves its virtual clock (``advance``); ``finish`` ends the run, which
    then pulls its quotes in virtual time as a run on its own clock does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.started: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[str] = loop.create_future()

    async def drive(self, run: Run) -> None:
        if not self.started.done():
            self.started.set_result(None)
        reason = await self.finished
        run.stop_reason = run.stop_reason or reason

    def finish(self, reason: str) -> None:
        if not self.finished.done():
            self.finished.set_result(reason)

    @staticmethod
    async def advance(run: Run, end_ns: int) -> None:
        """Run the run's events up to ``end_ns`` (virtual), in slices that let the
        event loop serve the journal and the run's file watcher."""
        clock = run.clock
        assert isinstance(clock, SimClock)
        while True:
            clock.run_until(end_ns, max_events=2_000, advance=True)
            if clock.now_ns() >= end_ns or clock.next_time() is None or run.stop_requested:
                return
            await asyncio.sleep(0)

    async def cancel_everything(self, run: Run) -> None:
        run.pull_quotes()
        clock = run.clock
        assert isinstance(clock, SimClock)
        deadline = clock.now_ns() + int(float(run.manifest.run.cancel_timeout) * NS)
        while run.orders.all_working() and clock.now_ns() < deadline:
            if clock.next_time() is None:
                break
            clock.run_until(min(deadline, clock.now_ns() + 10_000_000))


class _Episode:
    """One run of the manifest and what the environment tracks about it."""

    def __init__(
        self, run: Run, driver: EpisodeDriver, task: asyncio.Task[str], agent_name: str
    ) -> None:
        self.run = run
        self.driver = driver
        self.task = task
        self.agent_name = agent_name
        self.steps = 0
        self.done = False
        self.stop_reason = ""
        self.agent: GymAgent
        self.features: BookFeatures
        self.mark: Decimal | None = None
        self.pnl = 0.0

    def attach(self, levels: int, window: int) -> None:
        strategy = self.run.strategies[self.agent_name].strategy
        assert isinstance(strategy, GymAgent)
        self.agent = strategy
        self.features = BookFeatures(
            strategy.market, strategy.limit_lots, levels=levels, window=window
        )

    def current_pnl(self) -> float:
        """The agent market's PnL: realized + unrealized at the mid - fees."""
        market = self.agent.market
        mid = market.book.mid_ticks()
        if mid is not None:
            self.mark = market.instrument.tick_size * Decimal(str(mid))
        if self.mark is None and market.position_lots:
            return self.pnl
        return float(self.run.portfolio.pnl(market.key, self.mark))


class MarketMakingEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Market making on one market of a quoteforge manifest, as a Gymnasium environment.

    :param manifest: a manifest file (path) or the manifest as a dict; ``run.mode``
        ``sim`` or ``backtest``, with exactly one strategy of type ``gym_agent`` on one
        symbol (the agent; other strategies may trade beside it).
    :param episode_steps: actions per episode.
    :param step_seconds: virtual time between two actions.
    :param inventory_penalty: ``η`` of the reward ``ΔPnL - η · (position / order_size)²``,
        in the quote currency per step.
    :param action_mode: ``spread_skew`` (2 numbers) or ``quotes`` (4); see docs/gym.md.
    :param imbalance_levels: book levels per side in the imbalance feature.
    :param volatility_window: mid changes in the volatility feature.
    :param run_root: folder for the episodes' run folders (journal, trace, summary);
        a temporary folder, removed on ``close()``, when not given.
    :param keep_runs: keep every episode's run folder (default: only the latest).
    :param registry: the plugin registry (default: the process-wide one).
    :param render_mode: ``"ansi"``: ``render()`` returns one line of text (time, mid,
        position, PnL, fills); other modes render nothing.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 1}  # noqa: RUF012

    def __init__(
        self,
        manifest: str | Path | Mapping[str, Any],
        *,
        episode_steps: int = 200,
        step_seconds: float = 1.0,
        inventory_penalty: float = 0.0,
        action_mode: Literal["spread_skew", "quotes"] = "spread_skew",
        imbalance_levels: int = 5,
        volatility_window: int = 20,
        run_root: str | Path | None = None,
        keep_runs: bool = False,
        registry: PluginRegistry | None = None,
        render_mode: str | None = None,
    ) -> None:
        _check_settings(
            episode_steps, step_seconds, inventory_penalty, action_mode, imbalance_levels,
            volatility_window,
        )  # fmt: skip
        self.episode_steps = int(episode_steps)
        self.step_seconds = float(step_seconds)
        self.step_ns = round(self.step_seconds * NS)
        self.inventory_penalty = float(inventory_penalty)
        self.action_mode = action_mode
        self.imbalance_levels = int(imbalance_levels)
        self.volatility_window = int(volatility_window)
        self.keep_runs = keep_runs
        self.render_mode = render_mode
        self.registry = registry if registry is not None else load_registry()
        self._label, self._text, self._path = _manifest_source(manifest)
        #: The manifest as validated (with its own seed); each episode sets its seed.
        self.loaded = self._load([])
        self.agent_name, self.agent_params = _agent_of(self.loaded, self._label)
        self._made_root = run_root is None
        self.run_root = (
            Path(tempfile.mkdtemp(prefix="quoteforge-gym-")) if run_root is None else Path(run_root)
        )
        if self._made_root:  # removed even when the environment is never closed
            weakref.finalize(self, shutil.rmtree, self.run_root, True)
        self.observation_space = spaces.Box(OBSERVATION_LOW, OBSERVATION_HIGH, dtype=np.float32)
        size = 2 if action_mode == "spread_skew" else 4
        self.action_space = spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._episode: _Episode | None = None
        self._episodes = 0
        self._closed = False

    # -- manifest -------------------------------------------------------------------------
    def _load(self, overrides: list[str]) -> LoadedManifest:
        if self._text is not None:
            return load_manifest(self._label, self.registry, text=self._text, overrides=overrides)
        assert self._path is not None
        return load_manifest(self._path, self.registry, overrides=overrides)

    # -- the event loop the runs live on ----------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coro)
        # Called from inside a running loop (a notebook): run ours on a thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(self._loop.run_until_complete, coro).result()

    # -- Gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode: a new run of the manifest with run seed ``seed`` (or, without
        one, the next number of the environment's seeded random generator)."""
        if self._closed:
            raise RuntimeError("MarketMakingEnv: the environment is closed; make a new one")
        super().reset(seed=seed)
        run_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self._end_episode("episode reset")
        loaded = self._load(
            [
                f"run.seed={run_seed}",
                "run.watch_manifest=false",
                "report.html=false",
                "report.png=false",
            ]
        )
        self._episodes += 1
        run_dir = self.run_root / f"episode-{self._episodes:06d}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        return self._call(self._start(loaded, run_dir, run_seed))

    async def _start(
        self, loaded: LoadedManifest, run_dir: Path, run_seed: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        driver = EpisodeDriver(loop)
        run = Run(
            loaded,
            self.registry,
            run_dir=run_dir,
            manifest_path=self._path,
            driver=driver,
            run_info={"gym": {"episode": self._episodes, "seed": run_seed}},
            progress_bar=False,
        )
        task = loop.create_task(run.run())
        started: asyncio.Future[Any] = driver.started
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if not driver.started.done():
            task.result()  # raises what stopped the run from starting
            raise RuntimeError(f"{self._label}: the run ended before it started")
        episode = self._episode = _Episode(run, driver, task, self.agent_name)
        episode.attach(self.imbalance_levels, self.volatility_window)
        book = episode.agent.market.book
        clock = run.clock
        assert isinstance(clock, SimClock)
        warmup_end = clock.now_ns() + int(_WARMUP_S * NS)
        while book.mid_ticks() is None and clock.now_ns() < warmup_end:
            if clock.next_time() is None:
                break
            await EpisodeDriver.advance(run, min(warmup_end, clock.now_ns() + 10_000_000))
        if book.mid_ticks() is None:
            await self._finish(episode, "no two-sided book")
            raise GymManifestError(
                f"{self._label}: the book of {episode.agent.market.key} had no bid and ask "
                f"within {_WARMUP_S:g}s of virtual time; check the venue's market settings or "
                "the recording (run.data)"
            )
        episode.pnl = episode.current_pnl()
        obs = episode.features.observe(1.0, first=True)
        return obs, self._info(episode)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Quote the action's plan for ``step_seconds`` of virtual time."""
        episode = self._episode
        if episode is None or episode.done:
            raise RuntimeError(
                "MarketMakingEnv.step: no episode is running; call reset() first (and again "
                "after an episode terminated)"
            )
        plan = self._plan(episode.agent, action)
        return self._call(self._step(episode, plan))

    async def _step(
        self, episode: _Episode, plan: QuotePlan
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        run = episode.run
        episode.agent.set_plan(plan)
        episode.steps += 1
        await EpisodeDriver.advance(run, run.started_ns + episode.steps * self.step_ns)
        pnl = episode.current_pnl()
        agent = episode.agent
        inventory = agent.market.position_lots / agent.order_lots
        reward = (pnl - episode.pnl) - self.inventory_penalty * inventory * inventory
        episode.pnl = pnl
        left = 1.0 - episode.steps / self.episode_steps
        obs = episode.features.observe(left)
        reason = ""
        if episode.steps >= self.episode_steps:
            reason = "episode length reached"
        elif isinstance(run.clock, SimClock) and run.clock.next_time() is None:
            reason = "recording ended"
        elif run.strategies[episode.agent_name].halted:
            reason = "the agent's strategy was halted"
        elif run.stop_requested:
            reason = run.stop_reason or "run stopped"
        if reason:
            await self._finish(episode, reason)
        return obs, float(reward), bool(reason), False, self._info(episode)

    def _info(self, episode: _Episode) -> dict[str, Any]:
        agent = episode.agent
        info: dict[str, Any] = {
            "pnl": episode.pnl,
            "position": float(agent.market.qty(agent.market.position_lots)),
            "fills": episode.run.portfolio.fill_count(agent.market.key),
            "time_s": episode.steps * self.step_seconds,
        }
        if episode.done:
            info["stop_reason"] = episode.stop_reason
        return info

    def _plan(self, agent: GymAgent, action: Any) -> QuotePlan:
        size = 2 if self.action_mode == "spread_skew" else 4
        names = _ACTION_NAMES[self.action_mode]
        try:
            values = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"MarketMakingEnv: the action must be {size} numbers {names} in [-1, 1], got "
                f"{action!r}"
            ) from None
        if values.shape != (size,):
            raise ValueError(
                f"MarketMakingEnv ({self.action_mode}): the action must have shape ({size},) "
                f"{names}, got shape {values.shape}"
            )
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) > 1.0 + 1e-6):
            raise ValueError(
                f"MarketMakingEnv ({self.action_mode}): every action entry {names} must be "
                f"in [-1, 1], got {values.tolist()}; clip the policy's output"
            )
        p = agent.params
        low, high = p.min_half_spread_bps, p.max_half_spread_bps

        def distance(x: float) -> float:
            return low + (min(max(x, -1.0), 1.0) + 1.0) / 2.0 * (high - low)

        if self.action_mode == "spread_skew":
            skew = min(max(float(values[1]), -1.0), 1.0) * p.max_skew_bps
            return agent.spread_plan(distance(float(values[0])), skew)

        def lots(x: float) -> int:
            return math.floor((min(max(x, -1.0), 1.0) + 1.0) / 2.0 * agent.order_lots + 1e-9)

        return QuotePlan(
            distance(float(values[0])),
            distance(float(values[1])),
            lots(float(values[2])),
            lots(float(values[3])),
        )

    def spread_action(
        self, half_spread_bps: float | None = None, skew_bps: float | None = None
    ) -> np.ndarray:
        """The ``spread_skew`` action that quotes ``half_spread_bps`` and ``skew_bps``
        (default: the agent's own, the plain run's fixed plan)."""
        if self.action_mode != "spread_skew":
            raise ValueError("spread_action: the environment's action_mode is not spread_skew")
        p = self.agent_params
        half = p.half_spread_bps if half_spread_bps is None else float(half_spread_bps)
        skew_bps = p.skew_bps if skew_bps is None else float(skew_bps)
        low, high = p.min_half_spread_bps, p.max_half_spread_bps
        if not low <= half <= high or abs(skew_bps) > p.max_skew_bps:
            raise ValueError(
                f"spread_action: half spread {half} bps must be in [{low}, {high}] and skew "
                f"{skew_bps} bps within ±{p.max_skew_bps} (the agent's params in the manifest)"
            )
        spread = 2.0 * (half - low) / (high - low) - 1.0 if high > low else 0.0
        skew = skew_bps / p.max_skew_bps if p.max_skew_bps else 0.0
        return np.array([spread, skew], dtype=np.float32)

    def render(self) -> str | None:
        episode = self._episode
        if self.render_mode != "ansi" or episode is None:
            return None
        info = self._info(episode)
        mid = episode.agent.market.book.mid()
        return (
            f"t={info['time_s']:g}s mid={mid if mid is not None else '-'} "
            f"position={info['position']:g} pnl={info['pnl']:.4f} fills={info['fills']}"
        )

    # -- ending ---------------------------------------------------------------------------
    async def _finish(self, episode: _Episode, reason: str) -> None:
        episode.done = True
        episode.stop_reason = reason
        episode.driver.finish(reason)
        await episode.task

    def _end_episode(self, reason: str) -> None:
        episode, self._episode = self._episode, None
        if episode is None:
            return
        if not episode.done:
            self._call(self._finish(episode, reason))
        if not self.keep_runs:
            shutil.rmtree(episode.run.run_dir, ignore_errors=True)

    def close(self) -> None:
        if self._closed:
            return
        self._end_episode("environment closed")
        self._closed = True
        if self._loop is not None:
            self._call(self._loop.shutdown_asyncgens())
            self._loop.close()
            self._loop = None
        if self._made_root:
            shutil.rmtree(self.run_root, ignore_errors=True)
        super().close()


# -- checks ---------------------------------------------------------------------------------
def _check_settings(
    episode_steps: int,
    step_seconds: float,
    inventory_penalty: float,
    action_mode: str,
    imbalance_levels: int,
    volatility_window: int,
) -> None:
    def whole(name: str, value: Any, least: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ValueError(
                f"MarketMakingEnv: {name} must be a whole number >= {least}, got {value!r}"
            )

    whole("episode_steps", episode_steps, 1)
    whole("imbalance_levels", imbalance_levels, 1)
    whole("volatility_window", volatility_window, 2)
    if not isinstance(step_seconds, int | float) or not 0.001 <= float(step_seconds) <= 86_400:
        raise ValueError(
            f"MarketMakingEnv: step_seconds must be between 0.001 and 86400, got {step_seconds!r}"
        )
    if not isinstance(inventory_penalty, int | float) or not (
        math.isfinite(inventory_penalty) and inventory_penalty >= 0
    ):
        raise ValueError(
            f"MarketMakingEnv: inventory_penalty must be a finite number >= 0, got "
            f"{inventory_penalty!r}"
        )
    if action_mode not in ACTION_MODES:
        raise ValueError(
            f"MarketMakingEnv: action_mode must be one of {', '.join(ACTION_MODES)}, got "
            f"{action_mode!r}"
        )


def _manifest_source(
    manifest: str | Path | Mapping[str, Any],
) -> tuple[str, str | None, Path | None]:
    """(label for messages, manifest text or None, manifest path or None)."""
    if isinstance(manifest, Mapping):
        # JSON is YAML: the dict reads back exactly.
        return "manifest (dict)", json.dumps(dict(manifest), indent=2, default=str), None
    if isinstance(manifest, str | Path):
        path = Path(manifest)
        return str(path), None, path
    raise GymManifestError(
        "MarketMakingEnv: manifest must be a manifest file's path or the manifest as a dict, "
        f"got {type(manifest).__name__}"
    )


def _agent_of(loaded: LoadedManifest, label: str) -> tuple[str, Any]:
    """The name and params of the manifest's one ``gym_agent`` strategy."""
    manifest = loaded.manifest
    if manifest.run.mode not in _VIRTUAL_MODES:
        raise GymManifestError(
            f"{label}: run.mode is {manifest.run.mode!r}; an environment runs in virtual "
            "time: use mode sim (a simulated venue) or backtest (a replay venue)"
        )
    agents = [n for n, spec in manifest.strategies.items() if spec.type == AGENT_TYPE]
    if len(agents) != 1:
        found = ", ".join(f"{n} ({s.type})" for n, s in manifest.strategies.items()) or "none"
        raise GymManifestError(
            f"{label}: the environment trades through exactly one strategy of type "
            f"{AGENT_TYPE!r}, found {len(agents)} (strategies: {found}); add one, e.g. "
            f"strategies: {{agent: {{type: {AGENT_TYPE}, exchange: sim, symbols: BTC/USDT, "
            "params: {order_size: 0.05, inventory_limit: 0.5}}}}}"
        )
    name = agents[0]
    symbols = manifest.strategies[name].symbols
    if len(symbols) != 1:
        raise GymManifestError(
            f"{label}: strategy {name!r} ({AGENT_TYPE}) must quote exactly one symbol, got "
            f"{len(symbols)}: {', '.join(symbols)}"
        )
    return name, loaded.params_of("strategies", name)
