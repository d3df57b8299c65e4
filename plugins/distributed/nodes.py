"""Split runs: the market-data, strategy, execution and monitor nodes of one manifest,
each in its own process, talking over a network bus (``quoteforge run M --node ROLE``).

This module is the entry (``run_node``) and the checks a split run must pass; the roles
live in ``node_base`` (what every node shares), ``market_data_node``, ``strategy_node``,
``execution_node`` (with ``lockstep_driver``) and ``monitor_node``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from loguru import logger
from pydantic import ValidationError

from quoteforge.bus import Bus
from quoteforge.engine import run_manifest
from quoteforge.manifest import LoadedManifest, NodeSettings, load_manifest
from quoteforge.manifest_read import (
    ManifestError,
    ManifestProblem,
    apply_overrides,
    substitute_env,
)
from quoteforge.plugins.distributed.execution_node import ExecutionNode
from quoteforge.plugins.distributed.kill_latch import clear_latch
from quoteforge.plugins.distributed.market_data_node import MarketDataNode
from quoteforge.plugins.distributed.monitor_node import MonitorNode, format_monitor
from quoteforge.plugins.distributed.mqtt_params import unprotected_bus_refusal
from quoteforge.plugins.distributed.node_base import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    ROLES,
    SPLIT_ROLES,
    Node,
    NodeError,
    NodeRefusedError,
    NodeRefusedRunningError,
    is_lockstep,
    is_simulated,
    node_bus_params,
)
from quoteforge.plugins.distributed.strategy_node import StrategyNode
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.registry import PluginError, PluginRegistry
from quoteforge.runfiles import stop_signals

__all__ = [
    "ROLES",
    "SPLIT_ROLES",
    "ExecutionNode",
    "MarketDataNode",
    "MonitorNode",
    "NodeError",
    "NodeRefusedError",
    "NodeRefusedRunningError",
    "NodeSettings",
    "StrategyNode",
    "bus_security_problems",
    "clear_kill_latch",
    "format_monitor",
    "is_lockstep",
    "is_simulated",
    "load_node_manifest",
    "node_settings",
    "run_node",
]


async def clear_kill_latch(
    run_dir: Path, info: dict[str, Any], registry: PluginRegistry
) -> dict[str, Any] | None:
    """Clear the latched kill switch of the split run one of whose node folders is
    ``run_dir`` (``info`` its run.json), as that node's broker user: ``quoteforge kill
    RUN_DIR --reset``. Only the manifest's bus section is read (the venues' keys are
    neither needed nor asked for). Returns the latch cleared, None when none was set;
    raises ``ManifestError`` (the bus section no longer loads: a variable it names is
    not set) and ``TimeoutError`` (the broker did not take the reset)."""
    role = str(info.get("role"))
    path = run_dir / "manifest.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ManifestError(str(path), [ManifestProblem(None, "", f"unreadable: {exc}")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("bus"), dict):
        raise ManifestError(str(path), [ManifestProblem(None, "bus", "no bus section")])
    apply_overrides(data, [str(o) for o in info.get("overrides") or []])
    problems: list[tuple[tuple[str, ...], str]] = []
    spec = substitute_env(data["bus"], ("bus",), problems, set())
    try:
        params_type = registry.get("bus", str(spec.get("type"))).params
        params = params_type.model_validate(spec.get("params") or {})
    except (PluginError, ValidationError) as exc:
        problems.append((("bus",), str(exc)))
    if problems:
        raise ManifestError(str(path), [ManifestProblem(None, ".".join(p), m) for p, m in problems])
    beats = node_bus_params(params, f"{role}-reset", 0.0, user=role)
    run = str(info.get("name") or data["run"]["name"])  # run.json names the run
    bus: Bus = registry.get("bus", str(spec["type"])).factory(beats, run)
    await bus.start()
    try:
        connected = getattr(bus, "wait_connected", None)
        if connected is not None:  # a broker out of reach: said at once
            await connected(float(getattr(beats, "connect_timeout_s", 5.0)))
        return await clear_latch(bus, TopicScheme(run), f"operator on {role}")
    finally:
        await bus.close()


def node_settings(loaded: LoadedManifest) -> NodeSettings:
    """The manifest's ``nodes:`` section (defaults when absent)."""
    return loaded.manifest.nodes


def load_node_manifest(
    source: str | Path, registry: PluginRegistry, *, overrides: list[str] | None = None
) -> tuple[LoadedManifest, NodeSettings]:
    """Load a manifest and its node settings."""
    loaded = load_manifest(source, registry, overrides=overrides)
    return loaded, loaded.manifest.nodes


def _check_split(loaded: LoadedManifest, role: str) -> str | None:
    m = loaded.manifest
    if role not in ROLES:
        return f"unknown node role {role!r}: expected one of {', '.join(ROLES)}"
    if role == "all":
        return _one_process_problem(loaded)
    if m.bus.type == "inprocess":
        return (
            f"--node {role} needs a network bus, but the manifest's bus is 'inprocess', "
            "which reaches only its own process: set `bus: {type: mqtt, params: {host: ..., "
            "port: ...}}` in the manifest, or run every role in one process with --node all"
        )
    if m.run.mode == "backtest":
        return (
            f"--node {role}: a backtest replays recorded data in virtual time and runs in "
            "one process; use --node all"
        )
    timing = _timing_problem(m.nodes)
    if timing:
        return timing
    params = loaded.params_of("bus")
    problems = bus_security_problems(loaded)
    if problems and not getattr(params, "insecure", False):
        return unprotected_bus_refusal(f"--node {role}", problems)
    return None


def _one_process_problem(loaded: LoadedManifest) -> str | None:
    """A run in one process obeys a kill on its bus, so on a network bus a live run is
    held to the split nodes' rule; other modes are only warned at start. The MQTT
    backend refuses the same when the manifest loads (``MqttParams.manifest_problems``):
    this covers a network backend that does not."""
    m = loaded.manifest
    if m.bus.type == "inprocess" or m.run.mode != "live":
        return None
    problems = bus_security_problems(loaded)
    if problems and not getattr(loaded.params_of("bus"), "insecure", False):
        return unprotected_bus_refusal("a live run", problems)
    return None


def _timing_problem(nodes: NodeSettings) -> str | None:
    """Silences judged in less time than a heartbeat takes would end in a false alarm
    between two heartbeats: every book STALE, every strategy's orders cancelled."""
    beat = float(nodes.heartbeat)
    limits = (("stale_after", nodes.stale_after), ("strategy_grace", nodes.strategy_grace))
    for name, limit in limits:
        if float(limit) <= 2 * beat:
            return (
                f"nodes.{name} ({float(limit):g}s) must be longer than two heartbeats "
                f"(nodes.heartbeat {beat:g}s): a silence is judged against it, so one late "
                f"heartbeat would look like a lost node; raise nodes.{name} above "
                f"{2 * beat:g}s or send heartbeats more often"
            )
    return None


def bus_security_problems(loaded: LoadedManifest) -> list[str]:
    """Why the manifest's bus is unfit for a run that trades over it (a split run, or a
    live run in one process on a network bus): anonymous, unencrypted to another
    machine, or unsigned (the backend's ``security_problems()``). A backend that cannot
    say counts as unprotected."""
    m = loaded.manifest
    params = loaded.params_of("bus")
    check = getattr(params, "security_problems", None)
    if check is None:
        return [f"bus {m.bus.type!r} does not report how it authenticates nodes and messages"]
    return list(check())


async def run_node(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    role: str,
    run_dir: Path,
    manifest_path: Path | None = None,
    *,
    settings: NodeSettings | None = None,
    install_signals: bool = True,
    resume: bool = False,
) -> int:
    """Run one node of a manifest until its duration passes, a stop signal or the kill
    switch; returns a process exit code (0 ok, 1 failed or stopped with orders not
    confirmed closed at the venues, 2 refused configuration, or
    another instance of the role is online, or a strategy node's intents are refused by
    an execution node bound to another strategy session).

    ``role`` is marketdata, strategy, execution, monitor, or ``all`` for the whole run in
    this process (the in-process engine; on a network bus, a live run passes the nodes'
    bus checks too). Every other role needs a network bus. ``resume``: the strategy node
    continues ``run_dir`` (see ``quoteforge.resume``).
    """
    problem = _check_split(loaded, role)
    if resume and role != "strategy":
        problem = f"only the strategy node resumes, not the {role} node: start it again fresh"
    if problem is not None:
        logger.error("{}", problem)
        return EXIT_USAGE
    if role == "all":
        await run_manifest(
            loaded,
            registry,
            run_dir=run_dir,
            manifest_path=manifest_path,
            install_signals=install_signals,
        )
        return EXIT_OK
    for problem in bus_security_problems(loaded):
        # Only reached with insecure: true (_check_split refuses otherwise).
        logger.warning("INSECURE split run, bus.params.insecure is set: {}", problem)
    settings = settings if settings is not None else node_settings(loaded)
    node: Node | StrategyNode
    if role == "strategy":
        node = StrategyNode(loaded, registry, run_dir, settings, manifest_path, resume=resume)
    else:
        cls = {"marketdata": MarketDataNode, "execution": ExecutionNode, "monitor": MonitorNode}
        node = cls[role](loaded, registry, run_dir, settings, manifest_path)
    with stop_signals(node.request_stop, node.kill, enabled=install_signals):
        try:
            reason = await node.run()
        except NodeRefusedError as exc:
            when = "was refused" if isinstance(exc, NodeRefusedRunningError) else "refused to start"
            logger.error("{} node {}: {}", role, when, exc)
            return EXIT_USAGE
        except Exception as exc:
            logger.opt(exception=exc).error("{} node failed: {}", role, exc)
            return EXIT_ERROR
    logger.info("{} node stopped: {}", role, reason)
    if isinstance(node, StrategyNode):
        left = node.run_obj.run_info.get("orders_left_open")
    else:
        left = node.info.get("open_orders_left")
    if left:  # as a run in one process: a stop whose orders may still rest is no success
        logger.error("{} node: {} order(s) not confirmed closed at the venues", role, left)
        return EXIT_ERROR
    return EXIT_OK
