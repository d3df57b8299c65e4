"""Every hook a quoteforge plugin can implement: the plugin API reference.

Plugins implement these with ``@quoteforge.hookimpl`` in a module named by an entry
point of the ``quoteforge`` group. Registration hooks are called once when the plugin
manager loads; lifecycle and observer hooks are called on the cold path only. The hot
path (book -> strategy -> risk -> execution) never goes through pluggy: it calls the
objects the registration hooks returned, resolved once at start-up.

Each docstring here is the reference entry for its hook; ``docs/hooks.md`` is generated
from them (``quoteforge plugins --hooks``) and a test keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from quoteforge.model import Fill, Order, OrderUpdate
    from quoteforge.registry import Register, RegisterCommand

hookspec = pluggy.HookspecMarker("quoteforge")

__all__ = [
    "quoteforge_alert",
    "quoteforge_book_state_changed",
    "quoteforge_fill",
    "quoteforge_order_event",
    "quoteforge_register_alert_channels",
    "quoteforge_register_book_sources",
    "quoteforge_register_bus_backends",
    "quoteforge_register_commands",
    "quoteforge_register_exchanges",
    "quoteforge_register_execution_algos",
    "quoteforge_register_execution_policies",
    "quoteforge_register_journal_backends",
    "quoteforge_register_risk_checks",
    "quoteforge_register_strategies",
    "quoteforge_register_venue_wrappers",
    "quoteforge_report_written",
    "quoteforge_run_started",
    "quoteforge_run_stopped",
    "quoteforge_write_report",
]


# ---------------------------------------------------------------------------------------
# Exchange
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_exchanges(register: Register) -> None:
    """Register exchange adapter types.

    :param register: call ``register(name, factory, params=ParamsModel,
        description=..., requires=("module", ...))`` once per exchange type. ``factory``
        is called as ``factory(spec, context)`` when a manifest names the type.
        ``requires`` lists importable modules the adapter needs; when one is missing the
        type stays listed with the pip command that installs it.

    Called once per plugin when the plugin manager loads. All results are used (not
    firstresult). Must return quickly and must not open connections.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Order book
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_venue_wrappers(register: Register) -> None:
    """Register venue wrapper types: a wrapper takes a built exchange adapter and returns
    an adapter that stands in for it (``paper``: the venue's live market data with
    simulated fills; the run's ``paper:`` block holds its parameters).

    :param register: call ``register(name, factory, params=ParamsModel, ...)``;
        ``factory(adapter, params, context)`` returns the wrapping ``ExchangeAdapter``.
        The engine looks a wrapper up by name (``paper`` for ``run.mode: paper``); it
        never imports a venue module.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.2
    """


@hookspec
def quoteforge_register_book_sources(register: Register) -> None:
    """Register order-book data sources: the integrity rules of one venue protocol.

    :param register: call ``register(name, factory, description=...)``; ``factory``
        builds an object that turns a venue's snapshot and diff messages into book
        updates and says when the book must be resynchronised (sequence gap, checksum
        mismatch). A live adapter builds its books with the source its
        ``book_source`` param names (``binance_spot``, ``kraken_v2``, ...), looked up
        here, so a plugin's source registered under a new name can replace the
        built-in one.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_book_state_changed(market: str, old: str, new: str, reason: str) -> None:
    """Observe a book's state transition (SYNCING, LIVE, STALE, RESYNCING).

    :param market: ``venue:symbol`` of the book.
    :param old: previous state name.
    :param new: new state name.
    :param reason: why it changed (gap, checksum mismatch, silence, reconnect...).

    Called on every transition, from the event loop; must return within a millisecond.
    All implementations are called; return values are ignored.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Strategy
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_strategies(register: Register) -> None:
    """Register strategy types.

    :param register: call ``register(name, StrategyClass, params=ParamsModel,
        description=...)``. The class subclasses ``quoteforge.Strategy``; its ``Params``
        attribute is used when ``params`` is omitted.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Risk
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_risk_checks(register: Register) -> None:
    """Register risk check types.

    :param register: call ``register(name, CheckClass, params=ParamsModel,
        description=...)``. A check is constructed with its validated params and is
        called directly on the hot path for every quote a strategy wants.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_execution_policies(register: Register) -> None:
    """Register execution policy types.

    :param register: call ``register(name, PolicyClass, params=ParamsModel,
        description=...)``. A policy turns wanted quotes and working orders into the
        fewest venue actions; it is called directly on the hot path.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_register_execution_algos(register: Register) -> None:
    """Register execution algorithm types (TWAP, smart order routing, ...).

    :param register: call ``register(name, AlgoClass, params=ParamsModel,
        description=...)``. A strategy starts one with ``ctx.execute(name, market, side,
        qty_lots, **params)``: the params are validated against ``ParamsModel`` and the
        kernel calls ``AlgoClass(ctx, market, side, qty_lots, params, on_done)`` and then
        ``start()``. The instance must offer ``start()``, ``cancel()``, a ``done``
        property, and ``on_fill(fill)`` / ``on_order_update(update)`` returning True when
        the event belonged to it; it sends orders only through ``ctx.take`` (so risk
        applies) and calls ``on_done(self)`` once when it has finished.

    Called once per plugin at load time. All results are used (not firstresult). Must
    return quickly; the algorithms themselves run on the cold path of a strategy.

    .. versionadded:: 0.2
    """


# ---------------------------------------------------------------------------------------
# Infrastructure: bus and journal
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_bus_backends(register: Register) -> None:
    """Register message bus backends (in-process, MQTT, ...).

    :param register: call ``register(name, factory, params=ParamsModel,
        description=..., requires=(...))``; ``factory(params, run_id)`` returns a
        ``quoteforge.bus.Bus``.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_register_journal_backends(register: Register) -> None:
    """Register journal backends (SQLite, PostgreSQL, ...).

    :param register: call ``register(name, factory, params=ParamsModel,
        description=..., requires=(...))``; ``factory(params, run_dir)`` returns a
        ``quoteforge.journal.Journal``.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_register_alert_channels(register: Register) -> None:
    """Register alert channel types (webhook, ...).

    :param register: call ``register(name, ChannelClass, params=ParamsModel,
        description=...)``; the manifest's ``alerts`` section instantiates them as
        ``ChannelClass(params)``; each must have ``async def send(alert)``.

    Called once per plugin at load time. All results are used.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Run lifecycle and observers
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_run_started(run: Any) -> None:
    """A run has resolved its plugins and is about to receive market data.

    :param run: the ``quoteforge.engine.Run`` (its ``run_id``, ``manifest``,
        ``run_dir`` and ``mode``).

    Called once per run, before the first tick. All implementations are called; an
    exception is logged and does not stop the run.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_run_stopped(run: Any, summary: list[dict[str, Any]]) -> None:
    """A run has stopped: orders are cancelled and the journal is flushed.

    :param run: the ``quoteforge.engine.Run``.
    :param summary: one row per market, the columns of ``summary.csv``.

    Called once per run, after shutdown. All implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_order_event(run: Any, order: Order, update: OrderUpdate) -> None:
    """Observe an order state change after it is journaled.

    :param run: the ``quoteforge.engine.Run``.
    :param order: the order after the update was applied.
    :param update: the venue's report that changed it.

    Called from the event loop for every applied update; must return within a
    millisecond (hand slow work to a task). Not called at all when no plugin
    implements it. All implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_fill(run: Any, fill: Fill) -> None:
    """Observe one of our fills after it is journaled.

    :param run: the ``quoteforge.engine.Run``.
    :param fill: the fill, already applied to positions and PnL.

    Called from the event loop once per fill (duplicates are dropped before); must
    return within a millisecond. All implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_report_written(run: Any, path: Path) -> None:
    """A report file has been written into the run folder.

    :param run: the ``quoteforge.engine.Run``.
    :param path: the file written (``summary.csv``, ``trace.jsonl``, ``report.html`` ...).

    Called once per file at the end of a run. All implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def quoteforge_alert(run: Any, alert: Any) -> None:
    """Observe an alert: breaker trip, kill switch, prolonged STALE book, halted strategy.

    :param run: the ``quoteforge.engine.Run``.
    :param alert: a ``quoteforge.engine.Alert`` (``kind``, ``severity``, ``market``,
        ``message``, ``ts_ns``).

    Called from the event loop once per alert, before the manifest's alert channels
    send it; must return within a millisecond. All implementations are called.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@hookspec
def quoteforge_register_commands(register: RegisterCommand) -> None:
    """Register ``quoteforge`` subcommands (``report``, ``sweep``, ``record``, ...).

    :param register: call ``register(name, main, help="one line", requires=(...))`` once
        per command. ``main(argv: list[str]) -> int`` receives the arguments after the
        command name and returns the exit code; it parses them itself (``argparse`` with
        ``prog="quoteforge NAME"``) and imports its heavy modules inside, so that loading
        the plugin stays cheap. ``requires`` lists modules the command needs; while one
        is missing, ``quoteforge plugins`` shows the pip command that installs it.

    The kernel keeps ``run``, ``validate``, ``plugins`` and ``manifest``; a plugin cannot
    replace them, and a name another plugin registered first is refused (the plugin fails
    to load, naming both plugins). Built-in plugins load first, so a third-party plugin
    never takes a built-in command's name (``kill``, ``reset``, ``report``...).

    Called once per plugin when the plugin manager loads. All results are used. Must
    return quickly; ``quoteforge --help`` lists the commands with their ``help``.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def quoteforge_write_report(run_dir: Path, html: bool, png: bool) -> list[Path] | None:
    """Write the report of a finished run into its folder (``report.html``, charts).

    :param run_dir: the run folder, with its ``summary.csv``, ``trace.jsonl`` and
        journal already written.
    :param html: the manifest's ``report.html``: write the HTML report.
    :param png: the manifest's ``report.png``: write one PNG chart per market.

    Called once by ``quoteforge run`` after a single-process run has stopped, when
    ``html`` or ``png`` is true, after the summary table is printed. firstresult: the
    first implementation that returns a list (the files written, empty when it could
    not write them and said why in the log) ends the call; return None to leave the run
    to another plugin. An exception is logged and the run folder stays intact. With no
    implementation the run logs how to install the report plugin.

    .. versionadded:: 0.2
    """
