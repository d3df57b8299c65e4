"""What a manifest means beyond its schema: each plugin's ``type:`` resolved through the
registry and its ``params`` validated against the plugin's own schema (and those of the
plugins it wraps), the paper venue wrapper's params, and the rules across sections: a
strategy's exchange exists, its symbols are markets that exchange defines, one strategy
per market.

Part of ``quoteforge.manifest``, which calls ``resolve_plugins`` once the manifest has
validated; the public names are importable from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from quoteforge.manifest_read import ManifestProblem, allowed_keys, describe_error
from quoteforge.registry import PluginError, PluginRegistry

if TYPE_CHECKING:
    from quoteforge.manifest import LoadedManifest, PluginSpec

__all__ = ["resolve_plugins", "split_market"]


def split_market(home: str, entry: str) -> tuple[str, str]:
    """A strategy's ``symbols`` entry as (exchange, symbol): ``BTC/USDT`` is on the
    strategy's own exchange, ``other:BTC/USDT`` on exchange ``other``."""
    venue, sep, symbol = entry.partition(":")
    return (venue, symbol) if sep else (home, entry)


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
            message = describe_error(err)
            if err["type"] == "extra_forbidden":
                message += f"; {reg.name} takes: {allowed_keys(reg.params) or 'no params'}"
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


def resolve_plugins(
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
                    problems.append(problem(("paper", *sub), describe_error(err)))

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
