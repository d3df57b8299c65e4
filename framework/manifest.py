"""The run manifest: YAML in, a validated ``Manifest`` out, or errors with file and line.

Every error names the file, the line, the key path, what was expected and, for plugin
types, what is installed. ``${VAR}`` and ``${VAR:-default}`` are replaced from the
environment; values that came from the environment are remembered as secrets so the
log filter can redact them.

Reading is bounded before anything is built: the file size, the nesting depth and the
number of values YAML aliases expand to are capped, so a hostile file is refused with a
message instead of exhausting memory or the stack; NaN, infinities and integers beyond
64 bits are refused wherever they appear.

Three modules, one namespace: ``quoteforge.manifest_read`` reads the file (bounds, YAML
with lines, environment, ``--set``, the error types), this module holds the schema and
``load_manifest``, and ``quoteforge.manifest_checks`` resolves plugin types, validates
their params and checks the rules across sections. Every public name of the three is
importable from ``quoteforge.manifest``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema

from quoteforge.breakers import BreakerParams
from quoteforge.manifest_checks import PLUGIN_SECTIONS, resolve_plugins, split_market, without
from quoteforge.manifest_read import (
    FROM_ENV,
    MAX_ALIAS_VALUES,
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    DuplicateKeyError,
    ManifestError,
    ManifestProblem,
    UnreadableError,
    apply_overrides,
    explain,
    key_lines,
    literal_secrets,
    parse_yaml,
    read_text,
    substitute_env,
    unrepresentable,
)
from quoteforge.registry import KINDS, PluginRegistry
from quoteforge.strategy import NumbersNotBooleans

__all__ = [
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "Duration",
    "LoadedManifest",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "PluginSpec",
    "StrategySpec",
    "apply_overrides",
    "load_manifest",
    "manifest_schema",
    "parse_duration",
    "split_market",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

#: Longest duration any field accepts: ten years, so every duration fits int64 ns.
MAX_DURATION_S = 10 * 365 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1.5h"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 90, '90s', '15m' or '1h', got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"a duration must be at most 10 years, got {value!r}") from None
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 90, '90s', '15m' or '1h', got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise ValueError(
            f"a duration must be at most 10 years ({MAX_DURATION_S:.0f} s), got {value!r}; "
            "for no end write null where the field allows it"
        )
    return seconds


class _Closed(NumbersNotBooleans):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Duration(float):
    """A duration in seconds that the manifest may write as '15m', '90s' or 90."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            lambda v: cls(parse_duration(v)),
            json_schema_input_schema=core_schema.union_schema(
                [core_schema.float_schema(), core_schema.str_schema(pattern=_DURATION.pattern)]
            ),
        )


#: Run names become folder names: no separators, no leading dot, nothing a shell expands.
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RunSpec(_Closed):
    name: str = Field(
        "run",
        description="Name of the run; prefixes the run folder. Letters, digits, '.', '_' "
        "and '-', starting with a letter or digit, at most 64 characters.",
    )
    mode: Literal["sim", "backtest", "paper", "live"] = Field(
        "sim",
        description="sim: simulated exchange; backtest: replay recorded data; paper: live "
        "data, simulated fills; live: real orders.",
    )
    duration: Duration | None = Field(
        Duration(60),
        description="How long the run lasts (run time; virtual in sim). Null: until stopped.",
    )
    seed: int = Field(
        0,
        ge=0,
        lt=2**63,
        description="Seed of every random process; same seed, same run (0 to 2**63-1).",
    )
    data: str | None = Field(None, description="Recorded market-data file (backtest mode).")
    sample_interval: Duration = Field(
        Duration(1),
        ge=0.001,
        description="Interval of the per-market samples written to trace.jsonl (at least 1ms).",
    )
    out_dir: str = Field("runs", description="Folder under which run folders are created.")
    cancel_timeout: Duration = Field(
        Duration(15), description="How long shutdown waits for cancel acknowledgements."
    )
    reconcile_interval: Duration | None = Field(
        Duration(60),
        ge=1,
        description="Live runs compare open orders and recent fills with the venues' REST "
        "answers this often and repair differences (null: only at start and stop).",
    )
    watch_manifest: bool = Field(
        True, description="Apply changed strategy params from the manifest file during a run."
    )
    gc: Literal["between_events", "automatic"] | None = Field(
        None, description="Garbage collection: between_events (paper, live) or automatic."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _RUN_NAME.fullmatch(value):
            raise ValueError(
                "a run name may hold letters, digits, '.', '_' and '-', start with a letter "
                "or digit and be at most 64 characters (it names the run folder)"
            )
        return value


class PluginSpec(_Closed):
    type: str = Field(description="Registered plugin type (see `quoteforge plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The plugin's params.")


class ExchangeSpec(PluginSpec):
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Credentials handed to the adapter, each written as ${ENV_VAR}: "
        "secrets come from the environment, never from the file.",
    )


_ONE_OR_MANY = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


class StrategySpec(PluginSpec):
    exchange: str = Field(description="Name of an entry under `exchanges`.")
    symbols: Annotated[list[str], WithJsonSchema(_ONE_OR_MANY)] = Field(
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
        Duration(30), gt=0, description="Alert when a book stays out of LIVE longer than this."
    )


class NodeSettings(BaseModel):
    """The ``nodes:`` section of a manifest: timing of a run split into nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    heartbeat: Duration = Field(
        Duration(1),
        ge=0.01,
        description="Interval of every node's heartbeat/<role> message (at least 10ms).",
    )
    strategy_grace: Duration = Field(
        Duration(5),
        gt=0,
        description="How long the execution node waits without a strategy-node heartbeat "
        "before it cancels that node's orders and trips a breaker.",
    )
    stale_after: Duration = Field(
        Duration(3),
        gt=0,
        description="A strategy node marks a book STALE after this long without a book "
        "message or heartbeat of its publisher, or (real venues) an execution heartbeat.",
    )
    book_depth: int = Field(
        10, ge=1, le=1000, description="Levels per side in every published book message."
    )
    snapshot_interval: Duration = Field(
        Duration(1),
        ge=0.01,
        description="Interval of the retained book snapshots for late joiners (at least 10ms).",
    )
    connect_timeout: Duration = Field(
        Duration(30),
        gt=0,
        description="How long a strategy node waits for the instruments of a venue hosted "
        "by another node, and for the execution node at start, before it gives up.",
    )
    monitor_interval: Duration = Field(
        Duration(5), ge=0.1, description="How often the monitor node prints its table (>= 0.1s)."
    )
    linger: Duration | None = Field(
        None,
        description="After run.duration or the kill switch, the execution node serves "
        "until the strategy node has gone, at most this long (default: strategy_grace + "
        "run.cancel_timeout).",
    )
    replay_window: Duration = Field(
        Duration(300),
        description="Intents, order reports and fills of this recent past are published "
        "again when a peer node reconnects (receivers apply each message once).",
    )
    intent_max_age: Duration = Field(
        Duration(5),
        gt=0,
        description="The execution node refuses a new order whose intent is older (one "
        "replayed after an outage): the strategy quotes again on the book of now.",
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


class _Rest(Manifest):
    """What is left of a manifest with errors: the checks that can still run, run on it."""

    exchanges: dict[str, ExchangeSpec] = Field(default_factory=dict)
    strategies: dict[str, StrategySpec] = Field(default_factory=dict)


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
    try:
        if text is None:
            text = read_text(Path(source))
        root, data = parse_yaml(text)
    except UnreadableError as exc:
        raise ManifestError(label, [ManifestProblem(exc.line, "", exc.message)]) from None
    if not isinstance(data, dict):
        got = "an empty file" if root is None else f"a {type(data).__name__}"
        line = root.start_mark.line + 1 if root is not None else 1
        why = f"a manifest is a mapping with run, exchanges, strategies...; got {got}"
        raise ManifestError(label, [ManifestProblem(line, "", why)])
    marks: dict[tuple[str, ...], int] = {}
    try:
        if root is not None:
            key_lines(root, (), marks)
    except DuplicateKeyError as dup:
        where = ".".join((*dup.path, dup.key))
        why = f"duplicate key (first defined on line {dup.first})"
        raise ManifestError(label, [ManifestProblem(dup.line, where, why)]) from None

    def line_of(loc: tuple[str, ...]) -> int | None:
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in marks:
                return marks[loc[:cut]]
        return None

    overrides = list(overrides or [])
    override_paths = {tuple(o.split("=", 1)[0].split(".")) for o in overrides if "=" in o}
    apply_overrides(data, overrides)

    env_problems: list[tuple[tuple[str, ...], str]] = []
    literal_secrets(data, (), env_problems)
    secrets: set[str] = set()
    data = substitute_env(data, (), env_problems, secrets)
    FROM_ENV.set(FROM_ENV.get() | secrets)  # never echoed in what is said of a value
    unusable: list[tuple[tuple[str, ...], str]] = []
    unrepresentable(data, (), unusable)

    def problem(loc: tuple[str, ...], message: str) -> ManifestProblem:
        for value in sorted((v for v in secrets if len(v) >= 6), key=len, reverse=True):
            message = message.replace(value, "***")
        if loc in override_paths or any(loc[:n] in override_paths for n in range(1, len(loc))):
            return ManifestProblem(None, ".".join(loc) + " (from --set)", message)
        if loc and (loc[0],) not in marks:
            return ManifestProblem(None, ".".join(loc) + " (default)", message)
        return ManifestProblem(line_of(loc), ".".join(loc), message)

    problems = [problem(p, m) for p, m in env_problems + unusable]
    # Every problem in one pass: values nothing can run with are taken out before any
    # schema sees them, and a manifest with errors in its sections is still checked
    # plugin by plugin without the values that failed (what is said about those is not).
    dropped: list[tuple[str, ...]] = []
    base = without(data, [p for p, _ in unusable], dropped)
    try:
        manifest = Manifest.model_validate(base)
    except ValidationError as exc:
        locs = [tuple(str(p) for p in err["loc"]) for err in exc.errors()]
        for loc, err in zip(locs, exc.errors(), strict=True):
            if not any(loc[: len(cut)] == cut for cut in dropped):
                problems.append(problem(loc, explain(err, Manifest)))
        for _ in range(8):  # take out what failed, then what that leaves missing
            base = without(base, locs, dropped)
            try:
                manifest = _Rest.model_validate(base)
                break
            except ValidationError as again:
                locs = [tuple(str(p) for p in err["loc"]) for err in again.errors()]
        else:
            raise ManifestError(label, problems) from None
    dropped += [p for p, _ in env_problems]

    loaded = LoadedManifest(path, text, manifest, data, secrets=secrets, overrides=overrides)
    hidden: list[ManifestProblem] = []

    def checked(loc: tuple[str, ...], message: str) -> ManifestProblem:
        found = problem(loc, message)
        if any(loc[: len(cut)] == cut for cut in dropped):
            hidden.append(found)
        return found

    resolve_plugins(loaded, registry, problems, checked)
    problems = [p for p in problems if not any(p is h for h in hidden)]
    if problems:
        raise ManifestError(label, problems)
    return loaded


def manifest_schema(registry: PluginRegistry) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a manifest for this registry: each plugin section's
    ``type`` is an installed type (or alias) and selects that type's params schema, so an
    editor flags a misspelled param; ``x-quoteforge-plugin-params`` indexes the params
    schemas of every registered type by ``kind:name``."""
    regs = {f"{k}:{n}": r for k in KINDS for n, r in registry.types(k).items()}
    models: list[type[BaseModel]] = [Manifest]
    models += sorted(
        {r.params for r in regs.values()}, key=lambda m: f"{m.__module__}.{m.__name__}"
    )
    refs, top = models_json_schema([(m, "validation") for m in models])
    ref = {model: found for (model, _), found in refs.items()}  # {"$ref": "#/$defs/Name"}
    defs = top["$defs"]
    root: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    root |= defs.pop(ref[Manifest]["$ref"].removeprefix("#/$defs/"))
    for section, kind in PLUGIN_SECTIONS.items():
        names = {n: n for n in registry.types(kind)} | registry.aliases(kind)
        prop, named = root["properties"][section], section not in ("execution", "bus", "journal")
        spec = prop.pop("additionalProperties") if named else {"$ref": prop.pop("$ref")}
        chosen = [spec, {"properties": {"type": {"enum": sorted(names)}}}]
        for alias, name in sorted(names.items()):
            params = {"properties": {"params": ref[regs[f"{kind}:{name}"].params]}}
            pick = {"properties": {"type": {"const": alias}}, "required": ["type"]}
            chosen.append({"if": pick, "then": params})
        prop.update({"additionalProperties": {"allOf": chosen}} if named else {"allOf": chosen})
    if "venue_wrapper:paper" in regs:
        root["properties"]["paper"]["allOf"] = [ref[regs["venue_wrapper:paper"].params]]
        del root["properties"]["paper"]["additionalProperties"], root["properties"]["paper"]["type"]
    root["$defs"] = defs
    root["x-quoteforge-plugin-params"] = {
        key: defs[ref[r.params]["$ref"].removeprefix("#/$defs/")] for key, r in regs.items()
    }
    return root
