"""Plugin discovery and the registry of everything plugins provide.

Entry points of the ``quoteforge`` group are loaded one at a time. A plugin that fails
to import is recorded with the reason (and, for a missing optional dependency, the exact
pip command) instead of taking the other plugins down. A manifest that names a type
from such a plugin gets that reason as its error; nothing is skipped silently.

Environment switches:

``QUOTEFORGE_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the built-in plugins (those shipped in the ``quoteforge`` distribution).
``QUOTEFORGE_BLOCK_PLUGINS=name,name``
    do not load these entry points.
``QUOTEFORGE_TRACE_HOOKS=1``
    log every hook call and its result (pluggy tracing).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import pluggy
from loguru import logger
from pydantic import BaseModel, ConfigDict

from quoteforge import hookspecs
from quoteforge.strategy import check_interface

ENTRY_POINT_GROUP = "quoteforge"
DIST_NAME = "quoteforge"

KINDS = (
    "exchange",
    "strategy",
    "risk",
    "execution",
    "execution_algo",
    "bus",
    "journal",
    "book_source",
    "alert",
    "venue_wrapper",
)

_REGISTRATION_HOOKS = {
    "exchange": "quoteforge_register_exchanges",
    "strategy": "quoteforge_register_strategies",
    "risk": "quoteforge_register_risk_checks",
    "execution": "quoteforge_register_execution_policies",
    "execution_algo": "quoteforge_register_execution_algos",
    "bus": "quoteforge_register_bus_backends",
    "journal": "quoteforge_register_journal_backends",
    "book_source": "quoteforge_register_book_sources",
    "venue_wrapper": "quoteforge_register_venue_wrappers",
    "alert": "quoteforge_register_alert_channels",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "KERNEL_COMMANDS",
    "KINDS",
    "Command",
    "CommandMain",
    "NoParams",
    "PluginError",
    "PluginRecord",
    "PluginRegistry",
    "Register",
    "RegisterCommand",
    "Registration",
    "load_registry",
]

#: Subcommands the kernel's command line implements itself; no plugin may register them.
KERNEL_COMMANDS = ("run", "validate", "manifest")

#: What a command runs: the arguments after the command name in, an exit code out.
CommandMain = Callable[[list[str]], int]


class NoParams(BaseModel):
    """Parameter schema of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PluginError(Exception):
    """A plugin the run needs cannot be used; the message says how to fix it."""


class Register(Protocol):
    """The callback registration hooks receive."""

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        params: type[BaseModel] | None = None,
        description: str = "",
        requires: tuple[str, ...] = (),
        aliases: tuple[str, ...] = (),
    ) -> None: ...


class RegisterCommand(Protocol):
    """The callback ``quoteforge_register_commands`` receives."""

    def __call__(
        self, name: str, main: CommandMain, *, help: str = "", requires: tuple[str, ...] = ()
    ) -> None: ...


@dataclass
class Command:
    """One ``quoteforge NAME`` subcommand a plugin registered."""

    name: str
    main: CommandMain
    help: str
    plugin: str
    requires: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    install_hint: str = ""

    @property
    def loadable(self) -> bool:
        return not self.missing


@dataclass
class Registration:
    """One registered type: what a manifest's ``type:`` resolves to."""

    kind: str
    name: str
    factory: Any
    params: type[BaseModel]
    description: str
    plugin: str
    requires: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    install_hint: str = ""

    @property
    def loadable(self) -> bool:
        return not self.missing


@dataclass
class PluginRecord:
    """One discovered entry point and how loading it went."""

    name: str
    module: str
    dist: str
    version: str
    loaded: bool
    error: str = ""
    install_hint: str = ""
    provides: list[tuple[str, str]] = field(default_factory=list)


def _missing_modules(modules: tuple[str, ...]) -> tuple[str, ...]:
    missing = []
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(mod)
    return tuple(missing)


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"extra\s*==\s*['\"]([^'\"]+)['\"]")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_hint(dist_name: str, modules: tuple[str, ...], prefer: str = "") -> str:
    """The pip command that provides ``modules``: the distribution's extra that lists
    them when there is one (the extra named ``prefer``, the plugin's own name, when it
    lists them too), else the modules themselves."""
    try:
        dist = metadata.distribution(dist_name)
        requirements = dist.requires or []
    except metadata.PackageNotFoundError:
        requirements = []
    wanted = {_normalise(m.split(".")[0]) for m in modules}
    # Import names and distribution names differ for a few common packages.
    wanted |= {_normalise(_IMPORT_TO_DIST.get(m.split(".")[0], m)) for m in modules}
    extras: list[str] = []
    for req in requirements:
        name_match = _REQ_NAME.match(req)
        extra_match = _EXTRA_MARKER.search(req)
        if not name_match or not extra_match:
            continue
        if _normalise(name_match.group(1)) in wanted and extra_match.group(1) not in extras:
            extras.append(extra_match.group(1))
    if extras:
        # The narrowest extra is the one named after the feature, not "all"/"dev".
        # Several extras may list the same package (ccxt: binance and kraken): the one
        # named after the plugin wins, so the binance exchange asks for [binance].
        extras.sort(key=lambda e: (e != prefer, e in ("all", "dev"), len(e), e))
        return f'pip install "{dist_name}[{extras[0]}]"'
    names = " ".join(sorted({_IMPORT_TO_DIST.get(m.split(".")[0], m) for m in modules}))
    return f"pip install {names}"


_IMPORT_TO_DIST = {"psycopg": "psycopg", "yaml": "PyYAML", "prometheus_client": "prometheus-client"}


class PluginRegistry:
    """The plugin manager and what the plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("quoteforge")
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self._types: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        #: ``quoteforge NAME`` subcommands registered by plugins, by name.
        self.commands: dict[str, Command] = {}
        if os.environ.get("QUOTEFORGE_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda msg: logger.debug("hook: {}", msg.rstrip()))
            self.pm.enable_tracing()

    # -- loading ------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        blocked = {
            n.strip() for n in os.environ.get("QUOTEFORGE_BLOCK_PLUGINS", "").split(",") if n
        }
        builtin_only = os.environ.get("QUOTEFORGE_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")
        seen: set[tuple[str, str]] = set()

        # Built-ins first, so a third-party plugin can never take a built-in's name.
        def order(ep: metadata.EntryPoint) -> tuple[bool, str]:
            dist_name = ep.dist.name if ep.dist is not None else ""
            return (_normalise(dist_name) != DIST_NAME, ep.name)

        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=order):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if (ep.name, ep.value) in seen:
                continue  # the same distribution visible twice on sys.path
            seen.add((ep.name, ep.value))
            if ep.name in blocked or (builtin_only and _normalise(dist) != DIST_NAME):
                continue
            self._load_one(ep.name, ep.value, dist, version, ep.load)

    def register_module(self, module: Any, name: str | None = None) -> PluginRecord:
        """Register an already-imported plugin module or object (tests, embedding)."""
        plugin_name = str(name or getattr(module, "__name__", None) or repr(module))
        return self._load_one(plugin_name, plugin_name, "(direct)", "", lambda: module)

    def _load_one(
        self, name: str, value: str, dist: str, version: str, load: Callable[[], Any]
    ) -> PluginRecord:
        record = PluginRecord(name=name, module=value, dist=dist, version=version, loaded=False)
        self.records.append(record)
        try:
            module = load()
        except ModuleNotFoundError as exc:
            missing = exc.name or str(exc)
            own_package = value.split(":")[0].split(".")[0]
            if missing.split(".")[0] == own_package:
                # The plugin's own module is gone: a broken install, not a missing extra.
                record.error = f"module {missing!r} not found; reinstall {dist}"
                logger.warning("plugin {} ({}) failed to load: {}", name, dist, record.error)
                return record
            record.error = f"missing module {missing!r}"
            record.install_hint = install_hint(dist, (missing,), prefer=name)
            logger.debug("plugin {} not loaded: {}", name, record.error)
            return record
        except Exception as exc:  # a broken plugin never takes the others down
            record.error = f"{type(exc).__name__}: {exc}"
            logger.warning("plugin {} ({}) failed to load: {}", name, dist, record.error)
            return record
        typo = _unknown_hooks(module)
        if typo:
            record.error = typo
            logger.warning("plugin {} ({}) rejected: {}", name, dist, typo)
            return record
        try:
            self.pm.register(module, name=name)
        except ValueError as exc:
            record.error = f"already registered: {exc}"
            return record
        except pluggy.PluginValidationError as exc:
            record.error = f"invalid hook implementation: {exc}"
            logger.warning("plugin {} rejected: {}", name, exc)
            return record
        try:
            for kind, hook_name in _REGISTRATION_HOOKS.items():
                impls = getattr(self.pm.hook, hook_name).get_hookimpls()
                for impl in impls:
                    if impl.plugin is module:
                        impl.function(register=self._registrar(kind, name, dist, record))
            # Commands are kept aside until the plugin has registered everything, so a
            # plugin refused halfway leaves no command behind.
            commands: dict[str, Command] = {}
            for impl in self.pm.hook.quoteforge_register_commands.get_hookimpls():
                if impl.plugin is module:
                    impl.function(register=self._command_registrar(name, dist, commands))
        except Exception as exc:
            record.error = f"registration failed: {type(exc).__name__}: {exc}"
            logger.warning("plugin {} failed while registering: {}", name, exc)
            self.pm.unregister(module)
            return record
        self.commands.update(commands)
        record.provides += [("command", command) for command in commands]
        record.loaded = True
        return record

    def _registrar(self, kind: str, plugin: str, dist: str, record: PluginRecord) -> Register:
        def register(
            name: str,
            factory: Any,
            *,
            params: type[BaseModel] | None = None,
            description: str = "",
            requires: tuple[str, ...] = (),
            aliases: tuple[str, ...] = (),
        ) -> None:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise PluginError(
                    f"{kind} name {name!r} from plugin {plugin!r} must be lower_snake_case"
                )
            existing = self._types[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"{kind} {name!r} from plugin {plugin!r} is already registered by "
                    f"plugin {existing.plugin!r}"
                )
            if kind == "strategy":
                # A strategy written for another interface version would misread the
                # units it is handed: refuse it here, naming the type, so a manifest that
                # uses it gets this reason instead of "unknown strategy".
                problem = check_interface(factory)
                if problem:
                    raise PluginError(f"strategy {name!r} refused: {problem}")
            schema = params or getattr(factory, "Params", None) or NoParams
            missing = _missing_modules(tuple(requires))
            doc = description or (getattr(factory, "__doc__", None) or "").strip()
            reg = Registration(
                kind=kind,
                name=name,
                factory=factory,
                params=schema,
                description=doc.splitlines()[0] if doc else "",
                plugin=plugin,
                requires=tuple(requires),
                missing=missing,
                install_hint=install_hint(dist, missing, prefer=name) if missing else "",
            )
            self._types[kind][name] = reg
            for alias in aliases:
                self._aliases[kind][alias] = name
            record.provides.append((kind, name))

        return register

    def _command_registrar(
        self, plugin: str, dist: str, staged: dict[str, Command]
    ) -> RegisterCommand:
        def register(
            name: str, main: CommandMain, *, help: str = "", requires: tuple[str, ...] = ()
        ) -> None:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
                raise PluginError(
                    f"command name {name!r} from plugin {plugin!r} must be lower-case "
                    "letters, digits and dashes"
                )
            if not callable(main):
                raise PluginError(f"command {name!r} from plugin {plugin!r}: main is not callable")
            if name in KERNEL_COMMANDS:
                raise PluginError(
                    f"command {name!r} from plugin {plugin!r} collides with the kernel's own "
                    f"{name!r} command, which no plugin can replace"
                )
            existing = self.commands.get(name) or staged.get(name)
            if existing is not None:
                raise PluginError(
                    f"command {name!r} from plugin {plugin!r} is already registered by "
                    f"plugin {existing.plugin!r}"
                )
            missing = _missing_modules(tuple(requires))
            doc = help or (getattr(main, "__doc__", None) or "").strip()
            staged[name] = Command(
                name=name,
                main=main,
                help=doc.splitlines()[0] if doc else "",
                plugin=plugin,
                requires=tuple(requires),
                missing=missing,
                install_hint=install_hint(dist, missing, prefer=name) if missing else "",
            )

        return register

    def check_pending(self) -> None:
        """Fail on hook implementations whose name matches no specification (typos)."""
        self.pm.check_pending()

    # -- lookup -------------------------------------------------------------------------
    def types(self, kind: str) -> dict[str, Registration]:
        return self._types[kind]

    def aliases(self, kind: str) -> dict[str, str]:
        """The other names a manifest may give types of ``kind``: alias -> type name."""
        return dict(self._aliases[kind])

    def failed_plugins(self) -> list[PluginRecord]:
        return [r for r in self.records if not r.loaded]

    def get(self, kind: str, name: str) -> Registration:
        """The registration for ``name``, or a PluginError that says how to get it."""
        name = self._aliases[kind].get(name, name)
        reg = self._types[kind].get(name)
        if reg is None:
            hint = self._hint_for_unknown(kind, name)
            raise PluginError(hint)
        if reg.missing:
            raise PluginError(
                f"{kind} {name!r} needs: {reg.install_hint} "
                f"(missing module {', '.join(reg.missing)})"
            )
        return reg

    def _hint_for_unknown(self, kind: str, name: str) -> str:
        installed = ", ".join(sorted(self._types[kind])) or "none"
        for record in self.failed_plugins():
            refused = f"{kind} {name!r} refused:" in record.error
            if record.name == name or name in record.module or refused:
                fix = f"; {record.install_hint}" if record.install_hint else ""
                return (
                    f"{kind} {name!r} comes from plugin {record.name!r} ({record.dist}), "
                    f"which failed to load: {record.error}{fix}"
                )
        return f"unknown {kind} type {name!r}; installed: {installed}"


def _unknown_hooks(module: Any) -> str:
    """A message naming hook implementations that match no specification (typos)."""
    import difflib

    known = set(hookspecs.__all__)
    problems = []
    for attr in dir(module):
        if not attr.startswith("quoteforge_") or attr in known:
            continue
        if not hasattr(getattr(module, attr), "quoteforge_impl"):
            continue
        guess = difflib.get_close_matches(attr, known, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        problems.append(f"unknown hook {attr}{hint}")
    return "; ".join(problems)


_cached: PluginRegistry | None = None


def load_registry(*, fresh: bool = False) -> PluginRegistry:
    """The process-wide registry, loading entry points on first use."""
    global _cached
    if _cached is None or fresh:
        registry = PluginRegistry()
        registry.load_entry_points()
        _cached = registry
    return _cached
