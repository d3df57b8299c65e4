"""The run manifest: YAML in, a validated ``Manifest`` out, or errors with file and line.

Every error names the file, the line, the key path, what was expected and, for plugin
types, what is installed. ``${VAR}`` and ``${VAR:-default}`` are replaced from the
environment; values that came from the environment are remembered as secrets so the
log filter can redact them.

Reading is bounded before anything is built: the file size, the nesting depth and the
number of values YAML aliases expand to are capped, so a hostile file is refused with a
message instead of exhausting memory or the stack; NaN, infinities and integers beyond
64 bits are refused wherever they appear.
"""

from __future__ import annotations

import math
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
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
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

#: A manifest file larger than this is refused unread (real ones are a few kB).
MAX_MANIFEST_BYTES = 1 << 20
#: Deepest nesting of mappings and lists a manifest may use.
MAX_DEPTH = 64
#: Most values YAML aliases (``*name``) may expand to in one manifest.
MAX_ALIAS_VALUES = 10_000
#: Longest duration any field accepts: ten years, so every duration fits int64 ns.
MAX_DURATION_S = 10 * 365 * 86400.0
_INT64 = 1 << 63


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


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
        "message or a heartbeat of the node publishing it.",
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
        "by another node before it gives up.",
    )
    monitor_interval: Duration = Field(
        Duration(5), ge=0.1, description="How often the monitor node prints its table (>= 0.1s)."
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


class _UnreadableError(Exception):
    """The file cannot be read as a manifest; ``line`` is 1-based or None."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with the nesting depth and the alias expansion counted while the
    node tree is composed, before a Python object is built: aliases share one node, so
    a bomb costs nothing until something walks it, and the walk is what is capped."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._alias_values = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _UnreadableError(
                    line,
                    f"alias *{event.anchor} is used inside its own anchor &{event.anchor} "
                    "(a cycle); a manifest is a tree",
                )
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._alias_values += self._size(node)
                if self._alias_values > MAX_ALIAS_VALUES:
                    raise _UnreadableError(
                        line,
                        f"YAML aliases expand to more than {MAX_ALIAS_VALUES} values; "
                        "write the values out or use fewer aliases",
                    )
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _UnreadableError(
                line, f"nested more than {MAX_DEPTH} levels deep; a manifest needs far fewer"
            )
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # A scalar the constructor cannot build: a date like 2024-13-45, an integer
            # of more than 4300 digits.
            message = str(exc).split(";")[0].split("\n")[0][:200]
            raise _UnreadableError(node.start_mark.line + 1, f"bad value: {message}") from None

    def _size(self, node: yaml.Node) -> int:
        """Values ``node`` stands for once every alias below it is expanded."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size += sum(self._size(item) for item in node.value)
        self._sizes[id(node)] = size
        return size


def _read_text(path: Path) -> str:
    """The file as text, refused when too large or not UTF-8."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise _UnreadableError(None, "file not found") from None
    except IsADirectoryError:
        raise _UnreadableError(None, "is a folder; pass the manifest file") from None
    except OSError as exc:
        raise _UnreadableError(None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _UnreadableError(
            None, f"larger than {MAX_MANIFEST_BYTES // 1024} KiB; a manifest is a few kB of YAML"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _UnreadableError(
            line,
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
            "save the manifest as UTF-8",
        ) from None


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, bounded."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise _UnreadableError(
            None, f"larger than {MAX_MANIFEST_BYTES // 1024} KiB; a manifest is a few kB of YAML"
        )
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:
        raise _UnreadableError(
            text.count("\n", 0, exc.position) + 1,
            f"bad YAML: character U+{exc.character:04X} is not allowed in a YAML file",
        ) from None
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise _UnreadableError(
            mark.line + 1 if mark else None, f"bad YAML: {exc.problem or exc.context}"
        ) from None
    except yaml.YAMLError as exc:
        raise _UnreadableError(None, f"bad YAML: {exc}") from None
    finally:
        loader.dispose()
    return root, data


def _unrepresentable(
    value: Any, path: tuple[str, ...], out: list[tuple[tuple[str, ...], str]]
) -> None:
    """Collect NaN, infinities and integers beyond 64 bits anywhere in the data."""
    if isinstance(value, dict):
        for k, v in value.items():
            _unrepresentable(v, (*path, str(k)), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _unrepresentable(v, (*path, str(i)), out)
    elif isinstance(value, float) and not math.isfinite(value):
        out.append(
            (
                path,
                f"{value!r} is not a finite number; write a number (a literal above "
                "1.8e308 reads as infinity), or leave the key out for its default",
            )
        )
    elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        out.append((path, "integer out of range: a manifest value fits in 64 bits"))


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
    if not text.strip():
        return ""
    try:
        return _parse_yaml(text)[1]
    except _UnreadableError as exc:
        shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
        raise ManifestError("--set", [ManifestProblem(None, shown, exc.message)]) from None


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
        if len(keys) > MAX_DEPTH:
            raise ManifestError(
                "--set",
                [ManifestProblem(None, dotted[:80], f"a key path has at most {MAX_DEPTH} parts")],
            )
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
        shown = repr(got)
        if len(shown) > 80:
            shown = f"{shown[:60]}... ({len(shown)} characters)"
        return msg if msg.endswith(f"got {shown}") else f"{msg}; got {shown}"
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
    try:
        if text is None:
            text = _read_text(Path(source))
        root, data = _parse_yaml(text)
    except _UnreadableError as exc:
        raise ManifestError(label, [ManifestProblem(exc.line, "", exc.message)]) from None
    if not isinstance(data, dict):
        got = "an empty file" if root is None else f"a {type(data).__name__}"
        line = root.start_mark.line + 1 if root is not None else 1
        raise ManifestError(
            label,
            [
                ManifestProblem(
                    line,
                    "",
                    f"a manifest is a mapping with run, exchanges, strategies...; got {got}",
                )
            ],
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
    unusable: list[tuple[tuple[str, ...], str]] = []
    _unrepresentable(data, (), unusable)

    def problem(loc: tuple[str, ...], message: str) -> ManifestProblem:
        if loc in override_paths or any(loc[:n] in override_paths for n in range(1, len(loc))):
            return ManifestProblem(None, ".".join(loc) + " (from --set)", message)
        if loc and (loc[0],) not in marks:
            return ManifestProblem(None, ".".join(loc) + " (default)", message)
        return ManifestProblem(line_of(loc), ".".join(loc), message)

    problems = [problem(p, m) for p, m in env_problems]
    if unusable:
        # Values nothing can run with are refused before any schema sees them.
        raise ManifestError(label, problems + [problem(p, m) for p, m in unusable])
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


def _validate_params(
    reg: Any,
    raw: dict[str, Any],
    loc: tuple[str, ...],
    problems: list[ManifestProblem],
    problem: Any,
) -> BaseModel | None:
    """``raw`` validated against the registration's schema, or None with the problems."""
    try:
        params: BaseModel = reg.params.model_validate(raw)
        return params
    except ValidationError as exc:
        for err in exc.errors():
            sub = tuple(str(p) for p in err["loc"])
            message = _describe(err)
            if err["type"] == "extra_forbidden":
                message += f"; {reg.name} takes: {_allowed_keys(reg.params) or 'no params'}"
            problems.append(problem((*loc, *sub), message))
        return None


def _validate_wrapped(
    params: BaseModel,
    registry: PluginRegistry,
    loc: tuple[str, ...],
    problems: list[ManifestProblem],
    problem: Any,
    depth: int = 0,
) -> None:
    """Params of plugins that a plugin builds itself (a strategy wrapper's inner
    strategy), checked now instead of when the run starts."""
    wrapped = getattr(params, "wrapped_plugins", None)
    if wrapped is None or depth > 8:
        return
    for kind, type_name, sub, raw in wrapped():
        try:
            reg = registry.get(kind, type_name)
        except PluginError as exc:
            problems.append(problem((*loc, kind), str(exc)))
            continue
        inner = _validate_params(reg, raw, (*loc, *sub), problems, problem)
        if inner is not None:
            _validate_wrapped(inner, registry, (*loc, *sub), problems, problem, depth + 1)


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
        params = _validate_params(reg, spec.params, (*loc, "params"), problems, problem)
        if params is None:
            continue
        loaded.plugin_params[".".join(loc)] = params
        _validate_wrapped(params, registry, (*loc, "params"), problems, problem)
        # Rules that need the rest of the manifest (a strategy's symbols, run.data).
        around = getattr(params, "manifest_problems", None)
        if around is not None:
            for sub, message in around(m, spec):
                problems.append(problem((*loc, *sub), message))

    if m.paper or m.run.mode == "paper":
        try:
            paper = registry.get("venue_wrapper", "paper")
        except PluginError as exc:
            problems.append(problem(("run", "mode"), str(exc)))
        else:
            try:
                loaded.plugin_params["paper"] = paper.params.model_validate(m.paper)
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
