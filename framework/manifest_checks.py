"""What a manifest means beyond its schema: each plugin's ``type:`` resolved through the
registry and its ``params`` validated against the plugin's own schema (and those of the
plugins it wraps), the paper venue wrapper's params, and the rules across sections: a
strategy's exchange exists, its symbols are markets that exchange defines, one strategy
per market.

Part of ``quoteforge.manifest``, which calls ``resolve_plugins`` once the manifest has
validated; the public names are importable from there.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from quoteforge.manifest_read import ManifestProblem, close_match, explain
from quoteforge.registry import PluginError, PluginRegistry

if TYPE_CHECKING:
    from quoteforge.manifest import LoadedManifest, PluginSpec

__all__ = ["PLUGIN_SECTIONS", "resolve_plugins", "split_market", "without"]

#: The manifest's sections that hold plugins, and the kind of those plugins.
PLUGIN_SECTIONS = {
    "exchanges": "exchange",
    "strategies": "strategy",
    "risk": "risk",
    "alerts": "alert",
    "execution": "execution",
    "bus": "bus",
    "journal": "journal",
}


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
            problems.append(problem((*loc, *sub), explain(err, reg.params, f"{reg.name} takes")))
        return None


def _unknown_type(registry: PluginRegistry, kind: str, name: str, exc: PluginError) -> str:
    """The registry's message, with the nearest installed type when ``name`` is a typo."""
    head, sep, tail = str(exc).partition("; installed:")
    hint = close_match(name, [*registry.types(kind), *registry.aliases(kind)]) if sep else ""
    return f"{head}{hint}{sep}{tail}"


def without(
    data: dict[str, Any], locs: list[tuple[str, ...]], dropped: list[tuple[str, ...]]
) -> dict[str, Any]:
    """A copy of ``data`` without the values at ``locs`` (the deepest mapping key each
    reaches, a list as a whole) nor the strategies on an exchange taken out; each path
    taken out is added to ``dropped``."""
    data, locs = copy.deepcopy(data), list(locs)
    for loc in locs:  # grows while it runs: the strategies on a dropped exchange
        if any(len(cut) < len(loc) and loc[: len(cut)] == cut for cut in dropped):
            continue  # inside what is already out
        node, depth = data, 0
        while depth < len(loc) - 1 and isinstance(node.get(loc[depth]), dict):
            if loc[depth + 1] not in node[loc[depth]]:
                break
            node, depth = node[loc[depth]], depth + 1
        if not loc or loc[depth] not in node:
            continue  # a section left out: its default stands in
        del node[loc[depth]]
        dropped.append(loc[: depth + 1])
        strategies = data.get("strategies")
        if depth == 1 and loc[0] == "exchanges" and isinstance(strategies, dict):
            locs += [
                ("strategies", str(n))
                for n, spec in strategies.items()
                if isinstance(spec, dict) and spec.get("exchange") == loc[1]
            ]
    return data


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
            problems.append(problem((*loc, kind), _unknown_type(registry, kind, type_name, exc)))
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
    for section, kind in PLUGIN_SECTIONS.items():
        held = getattr(m, section)
        if isinstance(held, dict):
            entries += [(kind, (section, n), s) for n, s in held.items()]
        else:
            entries.append((kind, (section,), held))
    for kind, loc, spec in entries:
        try:
            reg = registry.get(kind, spec.type)
        except PluginError as exc:
            problems.append(problem((*loc, "type"), _unknown_type(registry, kind, spec.type, exc)))
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
                    problems.append(problem(("paper", *sub), explain(err, paper.params)))

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
