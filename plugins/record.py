"""``quoteforge record``: connect a manifest's venues for market data only and write every
wire message to a recording that ``type: replay`` plays back through the same book rules."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import yaml

from quoteforge import hookimpl
from quoteforge.clock import LiveClock
from quoteforge.exchange import ExchangeAdapter, VenueContext
from quoteforge.exchanges.recording import RecordingWriter
from quoteforge.manifest import (
    LoadedManifest,
    ManifestError,
    apply_overrides,
    load_manifest,
    parse_duration,
)
from quoteforge.model import OrderUpdate
from quoteforge.registry import PluginError, PluginRegistry, RegisterCommand, load_registry

__all__ = [
    "RecordError",
    "RecordSummary",
    "VenueTally",
    "build_market_data_venues",
    "load_market_data_manifest",
    "record",
    "record_main",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_MISSING = object()


class _Tapped(Protocol):
    """A venue that hands every raw market-data message to ``tap`` (the ccxt adapters)."""

    tap: Callable[[str, str, int], None] | None


class RecordError(Exception):
    """A recording that cannot start; the message says what is wrong and how to fix it."""


# -- manifest and venues ---------------------------------------------------------------------


def load_market_data_manifest(
    path: str | Path, registry: PluginRegistry, overrides: Sequence[str] = ()
) -> LoadedManifest:
    """Load a manifest as a paper run with every exchange's ``secrets`` emptied: market
    data needs no keys, so a recorder host never has to hold them (or export their
    variables), and a paper run needs none (a live one refuses to go without them)."""
    names = _exchange_names(Path(path), list(overrides))
    no_secrets = [f"exchanges.{name}.secrets={{}}" for name in names]
    return load_manifest(path, registry, overrides=[*overrides, *no_secrets, "run.mode=paper"])


def _exchange_names(path: Path, overrides: list[str]) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []  # load_manifest reports the file problem with its line
    if not isinstance(data, dict):
        return []
    data = copy.deepcopy(data)
    try:
        apply_overrides(data, overrides)
    except ManifestError:
        return []
    exchanges = data.get("exchanges")
    if not isinstance(exchanges, dict):
        return []
    return [str(name) for name, spec in exchanges.items() if isinstance(spec, dict)]


def _symbols_by_venue(loaded: LoadedManifest) -> dict[str, list[str]]:
    m = loaded.manifest
    symbols: dict[str, list[str]] = {name: [] for name in m.exchanges}
    for spec in m.strategies.values():
        for symbol in spec.symbols:
            if symbol != "*" and symbol not in symbols[spec.exchange]:
                symbols[spec.exchange].append(symbol)
    return symbols


def build_market_data_venues(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    *,
    only: Sequence[str] = (),
    manifest_path: Path | None = None,
    command: str = "record",
    verb: str = "record",
    with_secrets: bool = False,
) -> dict[str, ExchangeAdapter]:
    """Adapters for the manifest's exchanges (or ``only`` those), each with the symbols
    its strategies name, ready to ``connect``; without keys unless ``with_secrets`` (so
    no private stream opens). Nothing connects here."""
    m = loaded.manifest
    unknown = [name for name in only if name not in m.exchanges]
    if unknown:
        raise RecordError(
            f"no exchange {', '.join(map(repr, unknown))} in the manifest; "
            f"it defines: {', '.join(m.exchanges)}"
        )
    wanted = list(only) or list(m.exchanges)
    symbols = _symbols_by_venue(loaded)
    clock = LiveClock()
    venues: dict[str, ExchangeAdapter] = {}
    for name in wanted:
        spec = m.exchanges[name]
        if not symbols[name]:
            raise RecordError(
                f"exchange {name!r}: no symbols to {verb}; name them in a strategy on this "
                "exchange (a strategy with symbols ['*'] leaves the choice to the venue)"
            )
        ctx = VenueContext(
            name=name,
            clock=clock,
            seed=m.run.seed,
            mode="live",
            symbols=symbols[name],
            secrets=dict(spec.secrets) if with_secrets else {},
            extra={
                "data": m.run.data,
                "manifest_dir": manifest_path.parent if manifest_path else None,
            },
        )
        try:
            factory = registry.get("exchange", spec.type).factory
            venue = factory(loaded.params_of("exchanges", name), ctx)
        except (PluginError, ValueError) as exc:
            raise RecordError(f"exchange {name!r} (type {spec.type}): {exc}") from None
        if getattr(venue, "tap", _MISSING) is _MISSING:
            others = [n for n in m.exchanges if n != name]
            hint = f"; leave it out with --venue {' --venue '.join(others)}" if others else ""
            raise RecordError(
                f"exchange {name!r} is of type {spec.type!r}, which has no wire feed to "
                f"{verb}: `quoteforge {command}` works with venues reached over the network "
                f"(binance, kraken){hint}"
            )
        venues[name] = venue
    return venues


# -- the recorder ------------------------------------------------------------------------------


@dataclass
class VenueTally:
    """What one venue delivered during a recording."""

    messages: int = 0
    snapshots: int = 0
    reconnects: int = 0
    books: dict[str, str] = field(default_factory=dict)
    resyncs: int = 0


@dataclass
class RecordSummary:
    path: Path
    seconds: float
    stop_reason: str
    venues: dict[str, VenueTally]

    @property
    def messages(self) -> int:
        return sum(t.messages for t in self.venues.values())

    def table(self) -> str:
        rows = [("venue", "messages", "snapshots", "reconnects", "resyncs", "books")]
        for name, t in self.venues.items():
            books = " ".join(f"{s}:{state}" for s, state in t.books.items()) or "-"
            rows.append(
                (
                    name,
                    str(t.messages),
                    str(t.snapshots),
                    str(t.reconnects),
                    str(t.resyncs),
                    books,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r[:5], widths, strict=True))
            )
            + "  "
            + r[5]
            for r in rows
        ]
        return "\n".join(lines)


class _Recorder:
    """Writes tapped messages in receive order, with times that never go backwards
    (a wall-clock step back would make the file unreadable for merging)."""

    def __init__(self, writer: RecordingWriter) -> None:
        self.writer = writer
        self.tallies: dict[str, VenueTally] = {}
        self.failure: BaseException | None = None
        self._last_ns = 0
        self.on_failure: Callable[[str], None] = lambda reason: None

    def tap_for(self, venue: str) -> Callable[[str, str, int], None]:
        tally = self.tallies.setdefault(venue, VenueTally())
        write = self.writer.write

        def tap(stream: str, raw: str, recv_ns: int) -> None:
            if self.failure is not None:
                return
            if recv_ns < self._last_ns:
                recv_ns = self._last_ns
            self._last_ns = recv_ns
            try:
                write(venue, stream, raw, recv_ns)
            except (OSError, ValueError) as exc:
                self.failure = exc
                self.on_failure(f"cannot write {self.writer.path}: {exc}")
                return
            tally.messages += 1
            if stream.startswith("rest:"):
                tally.snapshots += 1

        return tap


class _BookWatch:
    """The sink of a market-data-only connection: keeps book states, nothing else."""

    def __init__(self, tally: VenueTally) -> None:
        self.tally = tally

    def on_book(self, book: Any) -> None:
        pass

    def on_book_state(self, book: Any, old: str, new: str, reason: str) -> None:
        self.tally.books[book.symbol] = new
        if new == "RESYNCING":
            self.tally.resyncs += 1

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Any, ts_ns: int
    ) -> None:
        pass

    def on_order_update(self, update: OrderUpdate) -> None:
        pass

    def on_fill(self, fill: Any) -> None:
        pass

    def on_offer(self, offer: Any) -> None:
        pass


async def record(
    venues: dict[str, ExchangeAdapter],
    out: str | Path,
    *,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    flush_interval_s: float = 1.0,
    install_signals: bool = True,
) -> RecordSummary:
    """Connect ``venues`` (market data only), write every message they receive to
    ``out`` until ``duration_s`` passes, ``stop`` is set, or SIGINT/SIGTERM arrives."""
    path = Path(out)
    stop = stop or asyncio.Event()
    reason = ["stopped"]

    def request_stop(why: str) -> None:
        if not stop.is_set():
            reason[0] = why
            stop.set()

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, request_stop, f"signal {sig.name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: the caller stops us through ``stop``
    created = not path.exists()
    writer = RecordingWriter(path)
    recorder = _Recorder(writer)
    recorder.on_failure = request_stop
    flusher: asyncio.Task[None] | None = None
    connected = False
    try:
        for name, venue in venues.items():
            cast(_Tapped, venue).tap = recorder.tap_for(name)
        results = await asyncio.gather(
            *(venue.connect(_BookWatch(recorder.tallies[name])) for name, venue in venues.items()),
            return_exceptions=True,
        )
        failed = [
            f"{name}: {type(res).__name__}: {res}"
            for name, res in zip(venues, results, strict=True)
            if isinstance(res, BaseException)
        ]
        if failed:
            raise RecordError("cannot connect: " + "; ".join(failed))

        async def flush_regularly() -> None:
            while True:
                await asyncio.sleep(flush_interval_s)
                with contextlib.suppress(OSError, ValueError):
                    writer.flush()

        flusher = asyncio.create_task(flush_regularly())
        started = time.monotonic()  # the recording's length, not the connect time
        try:
            await asyncio.wait_for(stop.wait(), duration_s)
        except TimeoutError:
            reason[0] = f"duration {duration_s:g}s reached"
        connected = True
    finally:
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        for venue in venues.values():
            cast(_Tapped, venue).tap = None
        for venue in venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        writer.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        if created and not connected and writer.count == 0:
            with contextlib.suppress(OSError):
                path.unlink()  # a failed start leaves no empty file that blocks the next try
    for name, venue in venues.items():
        sockets = getattr(venue, "sockets", [])
        recorder.tallies[name].reconnects = sum(max(s.connects - 1, 0) for s in sockets)
    if recorder.failure is not None:
        raise RecordError(f"recording stopped: cannot write {path}: {recorder.failure}")
    return RecordSummary(path, time.monotonic() - started, reason[0], recorder.tallies)


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quoteforge record",
        description="Record the market data of a manifest's exchanges (no strategies, no "
        "orders, no keys) to a .jsonl or .jsonl.gz file that `type: replay` plays back.",
    )
    p.add_argument("manifest", type=Path, help="the manifest whose exchanges and symbols to record")
    p.add_argument("--out", type=Path, required=True, help="recording file (.jsonl or .jsonl.gz)")
    p.add_argument(
        "--duration",
        help="how long to record, e.g. 90s, 10m, 2h (default: until Ctrl-C or SIGTERM)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a manifest value, e.g. exchanges.binance.params.testnet=false",
    )
    p.add_argument(
        "--venue",
        dest="venues",
        action="append",
        default=[],
        metavar="NAME",
        help="record only this exchange of the manifest (repeatable; default: all)",
    )
    p.add_argument(
        "--append", action="store_true", help="add to an existing recording instead of refusing"
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"),
        help="DEBUG, INFO, WARNING or ERROR",
    )
    return p


def record_main(argv: list[str] | None = None) -> int:
    """``quoteforge record MANIFEST --out FILE [--duration 10m] [--set K=V ...]``."""
    args = _parser().parse_args(argv)
    from quoteforge.logs import configure_logging

    configure_logging(args.log_level)
    duration: float | None = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            print(f"--duration: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if duration <= 0:
            print("--duration must be positive, e.g. 10m", file=sys.stderr)
            return EXIT_USAGE
    out: Path = args.out
    if not out.name.endswith((".jsonl", ".jsonl.gz")):
        print(f"--out {out}: name the file .jsonl or .jsonl.gz (compressed)", file=sys.stderr)
        return EXIT_USAGE
    if out.is_dir():
        print(f"--out {out} is a folder; name a recording file inside it", file=sys.stderr)
        return EXIT_USAGE
    if out.exists() and not args.append:
        print(
            f"--out {out} exists; choose another name or pass --append to add to it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    registry = load_registry()
    try:
        loaded = load_market_data_manifest(args.manifest, registry, args.overrides)
        venues = build_market_data_venues(
            loaded, registry, only=args.venues, manifest_path=args.manifest
        )
    except ManifestError as exc:
        print(f"manifest refused:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except RecordError as exc:
        print(f"quoteforge record: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"--out {out}: cannot create its folder: {exc}", file=sys.stderr)
        return EXIT_USAGE
    until = f"for {duration:g}s" if duration else "until Ctrl-C"
    print(f"recording {', '.join(venues)} to {out} {until}", flush=True)
    try:
        summary = asyncio.run(record(venues, out, duration_s=duration))
    except RecordError as exc:
        print(f"quoteforge record: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"quoteforge record: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"recorded {summary.messages} messages to {summary.path} in {summary.seconds:.1f}s "
        f"({summary.stop_reason})"
    )
    print(summary.table())
    return EXIT_OK


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "record",
        record_main,
        help="record the venues' market data of a manifest into a replayable file",
    )
