"""The run manifest: YAML in, a validated ``Manifest`` out, or errors with file and line.

Every error names the file, the line, the key path, what was expected and, for plugin
types, what is installed. ``${VAR}`` and ``${VAR:-default}`` are replaced from the
environment; values that came from the environment are remembered as secrets so the
log filter can redact them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quoteforge.breakers import BreakerParams
from quoteforge.registry import PluginError, PluginRegistry

__all__ = [
    "Duration",
    "LoadedManifest",
    "Manifest",
    "ManifestError",
    "PluginSpec",
    "StrategySpec",
    "apply_overrides",
    "load_manifest",
    "parse_duration",
    "split_market",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def split_market(home: str, entry: str) -> tuple[str, str]:
    """A strategy's ``symbols`` entry as (exchange, symbol): ``BTC/USDT`` is on the
    strategy's own exchange, ``other:BTC/USDT`` on exchange ``other``."""
    venue, sep, symbol = entry.partition(":")
    return (venue, symbol) if sep else (home, entry)


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1.5h"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 90, '90s', '15m' or '1h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 90, '90s', '15m' or '1h', got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Duration(float):
    """A duration in seconds that the manifest may write as '15m', '90s' or 90."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            lambda v: cls(parse_duration(v)),
            json_schema_input_schema=core_schema.union_schema(
                [core_schema.float_schema(), core_schema.str_schema()]
            ),
        )


class RunSpec(_Closed):
    name: str = Field("run", description="Name of the run; prefixes the run folder.")
    mode: Literal["sim", "backtest", "paper", "live"] = Field(
        "sim",
        description="sim: simulated exchange; backtest: replay recorded data; paper: live "
        "data, simulated fills; live: real orders.",
    )
    duration: Duration | None = Field(
        Duration(60),
        description="How long the run lasts (run time; virtual in sim). Null: until stopped.",
    )
    seed: int = Field(0, description="Seed of every random process; same seed, same run.")
    data: str | None = Field(None, description="Recorded market-data file (backtest mode).")
    sample_interval: Duration = Field(
        Duration(1), description="Interval of the per-market samples written to trace.jsonl."
    )
    out_dir: str = Field("runs", description="Folder under which run folders are created.")
    cancel_timeout: Duration = Field(
        Duration(15), description="How long shutdown waits for cancel acknowledgements."
    )
    reconcile_interval: Duration | None = Field(
        Duration(60),
        description="Live runs compare open orders and recent fills with the venues' REST "
        "answers this often and repair differences (null: only at start and stop).",
    )
    watch_manifest: bool = Field(
        True, description="Apply changed strategy params from the manifest file during a run."
    )


class PluginSpec(_Closed):
    type: str = Field(description="Registered plugin type (see `quoteforge plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The plugin's params.")


class ExchangeSpec(PluginSpec):
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Credentials handed to the adapter, each written as ${ENV_VAR}: "
        "secrets come from the environment, never from the file.",
    )


class StrategySpec(PluginSpec):
    exchange: str = Field(description="Name of an entry under `exchanges`.")
    symbols: list[str] = Field(
        description="Symbols this strategy trades on that exchange; ['*'] for all of them; "
        "'other_exchange:SYMBOL' adds a market of another exchange (cross-venue strategies)."
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ReportSpec(_Closed):
    html: bool = Field(True, description="Write report.html at the end of the run.")
    png: bool = Field(True, description="Write PNG charts per market at the end of the run.")


class MetricsSpec(_Closed):
    port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port (off when unset)."
    )
    host: str = Field("127.0.0.1", description="Interface the metrics endpoint listens on.")


class AlertSettings(_Closed):
    stale_after: Duration = Field(
        Duration(30), description="Alert when a book stays out of LIVE longer than this."
    )


class NodeSettings(BaseModel):
    """The ``nodes:`` section of a manifest: timing of a run split into nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat: Duration = Field(
        Duration(1), description="Interval of every node's heartbeat/<role> message."
    )
    strategy_grace: Duration = Field(
        Duration(5),
        description="How long the execution node waits without a strategy-node heartbeat "
        "before it cancels that node's orders and trips a breaker.",
    )
    stale_after: Duration = Field(
        Duration(3),
        description="A strategy node marks a book STALE after this long without a book "
        "message or a heartbeat of the node publishing it.",
    )
    book_depth: int = Field(
        10, ge=1, le=1000, description="Levels per side in every published book message."
    )
    snapshot_interval: Duration = Field(
        Duration(1), description="Interval of the retained book snapshots for late joiners."
    )
    connect_timeout: Duration = Field(
        Duration(30),
        description="How long a strategy node waits for the instruments of a venue hosted "
        "by another node before it gives up.",
    )
    monitor_interval: Duration = Field(
        Duration(5), description="How often the monitor node prints its table."
    )
    linger: Duration | None = Field(
        None,
        description="After run.duration, the execution node keeps serving until the "
        "strategy node has gone, at most this long (default: strategy_grace + "
        "run.cancel_timeout).",
    )
    replay_window: Duration = Field(
        Duration(300),
        description="Intents, order reports and fills of this recent past are published "
        "again when a peer node reconnects (receivers apply each message once).",
    )
    clock: Literal["auto", "wall"] = Field(
        "auto",
        description="auto: a sim run whose venues are all simulated runs its nodes in "
        "virtual time, in lock step, with the fills of the same manifest in one process; "
        "wall: every node on the wall clock (run.duration is wall time).",
    )


class Manifest(_Closed):
    run: RunSpec = Field(default_factory=RunSpec)
    exchanges: dict[str, ExchangeSpec] = Field(min_length=1)
    strategies: dict[str, StrategySpec] = Field(min_length=1)
    risk: dict[str, PluginSpec] = Field(default_factory=dict)
    execution: PluginSpec = Field(default_factory=lambda: PluginSpec(type="minimal_diff"))
    bus: PluginSpec = Field(default_factory=lambda: PluginSpec(type="inprocess"))
    journal: PluginSpec = Field(default_factory=lambda: PluginSpec(type="sqlite"))
    report: ReportSpec = Field(default_factory=ReportSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    alerts: dict[str, PluginSpec] = Field(
        default_factory=dict, description="Alert channels by name, e.g. a webhook."
    )
    alerting: AlertSettings = Field(default_factory=AlertSettings)
    breakers: BreakerParams | None = Field(
        None, description="Circuit breakers: PnL floor, drawdown, errors, stale data."
    )
    nodes: NodeSettings = Field(
        default_factory=NodeSettings, description="Timing of a run split into nodes."
    )
    paper: dict[str, Any] = Field(
        default_factory=dict,
        description="Fill simulation of mode: paper (queue model, fees, latency).",
    )


@dataclass
class ManifestProblem:
    line: int | None
    path: str
    message: str


class ManifestError(Exception):
    """A manifest that cannot run; ``str()`` lists every problem with its line."""

    def __init__(self, source: str, problems: list[ManifestProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = []
        for p in problems:
            where = f"{source}:{p.line}" if p.line else source
            key = f" {p.path}:" if p.path else ""
            lines.append(f"{where}:{key} {p.message}")
        super().__init__("\n".join(lines))


@dataclass
class LoadedManifest:
    """A validated manifest with what was resolved from it."""

    path: Path | None
    text: str
    manifest: Manifest
    data: dict[str, Any]
    plugin_params: dict[str, BaseModel] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set, repr=False)
    overrides: list[str] = field(default_factory=list)

    def params_of(self, section: str, name: str | None = None) -> BaseModel:
        return self.plugin_params[f"{section}.{name}" if name else section]


# -- YAML with line numbers --------------------------------------------------------------


def _marks(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1, seen[key], path)
            seen[key] = key_node.start_mark.line + 1
            out[(*path, key)] = key_node.start_mark.line + 1
            _marks(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _marks(item, (*path, str(i)), out)


class _DuplicateKeyError(Exception):
    def __init__(self, key: str, line: int, first: int, path: tuple[str, ...]) -> None:
        self.key, self.line, self.first, self.path = key, line, first, path


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def _substitute_env(
    value: Any, path: tuple[str, ...], problems: list[tuple[tuple[str, ...], str]], secrets: set
) -> Any:
    if isinstance(value, dict):
        return {k: _substitute_env(v, (*path, str(k)), problems, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, (*path, str(i)), problems, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is not None:
                return default
            fallback = "" if "secrets" in path else f" (or write ${{{name}:-default}})"
            problems.append(
                (
                    path,
                    f"environment variable {name} is not set; export it before the run{fallback}",
                )
            )
            return ""
        if found:
            secrets.add(found)
        return found

    return _ENV.sub(replace, value)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to the raw manifest."""
    for item in overrides:
        if "=" not in item:
            raise ManifestError(
                "--set", [ManifestProblem(None, item, "expected KEY.PATH=VALUE, e.g. run.seed=7")]
            )
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ManifestError("--set", [ManifestProblem(None, item, "empty key path")])
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    here = ".".join(keys[: depth + 1])
                    raise ManifestError("--set", [ManifestProblem(None, here, "no such list item")])
                node = node[int(key)]
                continue
            if not isinstance(node, dict):
                here = ".".join(keys[:depth])
                raise ManifestError(
                    "--set", [ManifestProblem(None, here, "is not a mapping, cannot set below it")]
                )
            node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ManifestError(
                "--set", [ManifestProblem(None, ".".join(keys[:-1]), "is not a mapping")]
            )
        node[keys[-1]] = _parse_scalar(raw)


def _describe(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required value is missing"
    msg = str(err.get("msg", "invalid value"))
    got = err.get("input")
    if kind not in ("missing",) and not isinstance(got, dict | list) and got is not None:
        return f"{msg}; got {got!r}"
    return msg


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(sorted(model.model_fields))


def load_manifest(
    source: str | Path,
    registry: PluginRegistry,
    *,
    overrides: list[str] | None = None,
    text: str | None = None,
) -> LoadedManifest:
    """Read, substitute, validate and resolve a manifest; raise ManifestError."""
    path = Path(source) if text is None else None
    label = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError(label, [ManifestProblem(None, "", "file not found")]) from None
        except OSError as exc:
            raise ManifestError(label, [ManifestProblem(None, "", f"cannot read: {exc}")]) from None

    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = f"bad YAML: {exc.problem or exc.context}"
        raise ManifestError(label, [ManifestProblem(line, "", what)]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(label, [ManifestProblem(None, "", f"bad YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ManifestError(
            label,
            [ManifestProblem(1, "", "a manifest is a mapping with run, exchanges, strategies...")],
        )
    marks: dict[tuple[str, ...], int] = {}
    try:
        if root is not None:
            _marks(root, (), marks)
    except _DuplicateKeyError as dup:
        where = ".".join((*dup.path, dup.key))
        raise ManifestError(
            label,
            [
                ManifestProblem(
                    dup.line, where, f"duplicate key (first defined on line {dup.first})"
                )
            ],
        ) from None

    def line_of(loc: tuple[str, ...]) -> int | None:
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in marks:
                return marks[loc[:cut]]
        return None

    overrides = list(overrides or [])
    override_paths = {tuple(o.split("=", 1)[0].split(".")) for o in overrides if "=" in o}
    apply_overrides(data, overrides)

    env_problems: list[tuple[tuple[str, ...], str]] = []
    exchanges = data.get("exchanges")
    if isinstance(exchanges, dict):
        for name, spec in exchanges.items():
            declared = spec.get("secrets") if isinstance(spec, dict) else None
            if not isinstance(declared, dict):
                continue
            for key, value in declared.items():
                if not (isinstance(value, str) and _ENV_ONLY.fullmatch(value.strip())):
                    env_problems.append(
                        (
                            ("exchanges", str(name), "secrets", str(key)),
                            "a secret must come from the environment: write ${SOME_VAR} "
                            "and export SOME_VAR, never the value itself",
                        )
                    )
    secrets: set[str] = set()
    data = _substitute_env(data, (), env_problems, secrets)
    problems = [ManifestProblem(line_of(p), ".".join(p), m) for p, m in env_problems]

    def problem(loc: tuple[str, ...], message: str) -> ManifestProblem:
        if loc in override_paths or any(loc[:n] in override_paths for n in range(1, len(loc))):
            return ManifestProblem(None, ".".join(loc) + " (from --set)", message)
        if loc and (loc[0],) not in marks:
            return ManifestProblem(None, ".".join(loc) + " (default)", message)
        return ManifestProblem(line_of(loc), ".".join(loc), message)

    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            message = _describe(err)
            if err["type"] == "extra_forbidden":
                parent = _model_at(loc[:-1])
                if parent is not None:
                    message += f"; expected one of: {_allowed_keys(parent)}"
            problems.append(problem(loc, message))
        raise ManifestError(label, problems) from None
    if problems:
        raise ManifestError(label, problems)

    loaded = LoadedManifest(path, text, manifest, data, secrets=secrets, overrides=overrides)
    _resolve_plugins(loaded, registry, problems, problem)
    if problems:
        raise ManifestError(label, problems)
    return loaded


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    if not loc:
        return Manifest
    models: dict[str, type[BaseModel]] = {
        "run": RunSpec,
        "execution": PluginSpec,
        "bus": PluginSpec,
        "journal": PluginSpec,
        "report": ReportSpec,
        "metrics": MetricsSpec,
        "alerting": AlertSettings,
        "breakers": BreakerParams,
        "nodes": NodeSettings,
    }
    if len(loc) == 1:
        return models.get(loc[0])
    if len(loc) == 2 and loc[0] == "exchanges":
        return ExchangeSpec
    if len(loc) == 2 and loc[0] in ("risk", "alerts"):
        return PluginSpec
    if len(loc) == 2 and loc[0] == "strategies":
        return StrategySpec
    return None


def _resolve_plugins(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    problems: list[ManifestProblem],
    problem: Any,
) -> None:
    m = loaded.manifest
    entries: list[tuple[str, tuple[str, ...], PluginSpec]] = []
    entries += [("exchange", ("exchanges", n), s) for n, s in m.exchanges.items()]
    entries += [("strategy", ("strategies", n), s) for n, s in m.strategies.items()]
    entries += [("risk", ("risk", n), s) for n, s in m.risk.items()]
    entries += [("alert", ("alerts", n), s) for n, s in m.alerts.items()]
    entries.append(("execution", ("execution",), m.execution))
    entries.append(("bus", ("bus",), m.bus))
    entries.append(("journal", ("journal",), m.journal))
    for kind, loc, spec in entries:
        try:
            reg = registry.get(kind, spec.type)
        except PluginError as exc:
            problems.append(problem((*loc, "type"), str(exc)))
            continue
        try:
            params = reg.params.model_validate(spec.params)
        except ValidationError as exc:
            for err in exc.errors():
                sub = tuple(str(p) for p in err["loc"])
                message = _describe(err)
                if err["type"] == "extra_forbidden":
                    message += f"; {spec.type} takes: {_allowed_keys(reg.params) or 'no params'}"
                problems.append(problem((*loc, "params", *sub), message))
            continue
        loaded.plugin_params[".".join(loc)] = params

    if m.paper or m.run.mode == "paper":
        from quoteforge.exchanges.paper import PaperParams

        try:
            loaded.plugin_params["paper"] = PaperParams.model_validate(m.paper)
        except ValidationError as exc:
            for err in exc.errors():
                sub = tuple(str(p) for p in err["loc"])
                problems.append(problem(("paper", *sub), _describe(err)))

    claimed: dict[str, str] = {}
    for name, strat in m.strategies.items():
        loc = ("strategies", name)
        if strat.exchange not in m.exchanges:
            known = ", ".join(sorted(m.exchanges))
            problems.append(
                problem((*loc, "exchange"), f"no exchange {strat.exchange!r}; defined: {known}")
            )
            continue
        if not strat.symbols:
            problems.append(problem((*loc, "symbols"), "at least one symbol is required"))
        exchange_key = f"exchanges.{strat.exchange}"
        declared = None
        if exchange_key in loaded.plugin_params:
            reg = registry.get("exchange", m.exchanges[strat.exchange].type)
            declare = getattr(reg.factory, "declared_symbols", None)
            if declare is not None:
                declared = declare(loaded.plugin_params[exchange_key])
        if "*" in strat.symbols:
            if len(strat.symbols) > 1:
                problems.append(problem((*loc, "symbols"), "'*' (every market) stands alone"))
            continue
        for i, entry in enumerate(strat.symbols):
            venue_name, symbol = split_market(strat.exchange, entry)
            venue_declared = declared
            if venue_name != strat.exchange:
                # "other_exchange:SYMBOL" adds a market of another venue (cross-venue).
                if venue_name not in m.exchanges:
                    known = ", ".join(sorted(m.exchanges))
                    problems.append(
                        problem(
                            (*loc, "symbols", str(i)),
                            f"no exchange {venue_name!r} for {entry!r}; defined: {known}",
                        )
                    )
                    continue
                other = f"exchanges.{venue_name}"
                venue_declared = None
                if other in loaded.plugin_params:
                    other_reg = registry.get("exchange", m.exchanges[venue_name].type)
                    other_declare = getattr(other_reg.factory, "declared_symbols", None)
                    if other_declare is not None:
                        venue_declared = other_declare(loaded.plugin_params[other])
            if venue_declared is not None and symbol not in venue_declared:
                problems.append(
                    problem(
                        (*loc, "symbols", str(i)),
                        f"exchange {venue_name!r} has no market {symbol!r}; "
                        f"it defines: {', '.join(venue_declared)}",
                    )
                )
            market = f"{venue_name}:{symbol}"
            if market in claimed:
                problems.append(
                    problem(
                        (*loc, "symbols", str(i)),
                        f"market {market} is already quoted by strategy {claimed[market]!r}; "
                        "one strategy per market",
                    )
                )
            claimed[market] = name
