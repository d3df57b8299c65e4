"""The ``replay`` exchange: recorded market data replayed on the run's virtual clock
through the venue's own book rules, with our orders filled by the fill simulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import quoteforge
from quoteforge.book import BookMessageError, BookSource, BookState, L2Book, WireDecimalParser
from quoteforge.clock import TimerHandle
from quoteforge.exchange import OrderAction, VenueContext, VenueSink
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.exchanges.binance.fast import binance_trade_text as _trade_text
from quoteforge.exchanges.fillsim import FillSimParams, FillSimulator
from quoteforge.exchanges.kraken.book import KRAKEN_DEPTHS, KrakenBookSource
from quoteforge.exchanges.profiles import ProfileParams, describe_limits, limits_for, screen
from quoteforge.exchanges.recording import RecordingError, RecordTuple, record_batches
from quoteforge.exchanges.sim.base import BPS, SimulatedVenue
from quoteforge.model import Instrument, OrderUpdate, Side
from quoteforge.registry import Register

__all__ = ["PROTOCOL_QTY_DECIMALS", "ReplayExchange", "ReplayMarketParams", "ReplayParams"]

_decode: Callable[[str | bytes], Any]
try:  # the same fast decoder the book sources use, when it is installed
    import orjson

    _decode = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _decode = json.loads

WireProtocol = Literal["binance_spot", "binance_futures", "kraken_v2"]
_SOURCES: dict[str, type[BookSource]] = {
    "binance_spot": BinanceSpotBookSource,
    "binance_futures": BinanceFuturesBookSource,
    "kraken_v2": KrakenBookSource,
}
_LIVE = BookState.LIVE
_WARN_LIMIT = 20


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ReplayMarketParams(_Closed):
    """A market's grids as the venue publishes them. The quantity precision of the
    recording (what book levels and trades are read at) comes from the protocol unless
    ``qty_decimals`` is given."""

    tick_size: Decimal = Field(gt=0, description="Price increment, as the venue defines it.")
    qty_step: Decimal | None = Field(
        None,
        gt=0,
        description="Order quantity step, as the venue publishes it (Binance LOT_SIZE "
        "stepSize, Kraken 10^-lot_decimals). Orders are sent in whole steps.",
    )
    lot_size: Decimal | None = Field(
        None,
        gt=0,
        description="The older name of qty_step (the order quantity increment); give one "
        "of the two.",
    )
    qty_decimals: int | None = Field(
        None,
        ge=0,
        le=18,
        description="Decimals the recording reports quantities with (book levels, trades). "
        "Default from the protocol: 8 for binance_spot, binance_futures and kraken_v2.",
    )
    min_qty: Decimal = Field(Decimal(0), ge=0, description="Smallest order quantity.")
    min_notional: Decimal = Field(Decimal(0), ge=0, description="Smallest price x quantity.")
    wire_symbol: str | None = Field(
        None,
        description="The symbol as the recording spells it (Binance 'BTCUSDT', Kraken "
        "'BTC/USD'); default: derived from the market name.",
    )

    @model_validator(mode="after")
    def _one_step(self) -> ReplayMarketParams:
        if self.qty_step is not None and self.lot_size is not None:
            if self.qty_step != self.lot_size:
                raise ValueError(
                    f"lot_size {self.lot_size} and qty_step {self.qty_step} disagree: both "
                    "name the order quantity step; give only qty_step"
                )
        elif self.qty_step is None and self.lot_size is None:
            raise ValueError(
                "give qty_step, the order quantity step the venue publishes (Binance "
                "LOT_SIZE stepSize, e.g. '0.00001' for BTCUSDT)"
            )
        return self

    @property
    def step(self) -> Decimal:
        """The order quantity step, whichever name gave it."""
        step = self.qty_step if self.qty_step is not None else self.lot_size
        assert step is not None  # the validator requires one
        return step


#: Decimals each recorded protocol reports quantities with: Binance spot and USD-M
#: futures send 8 whatever the order step; Kraken's v2 feed sends lot_decimals (8 for
#: the pairs it lists at that precision; set ``qty_decimals`` for others).
PROTOCOL_QTY_DECIMALS: dict[str, int] = {
    "binance_spot": 8,
    "binance_futures": 8,
    "kraken_v2": 8,
}


class ReplayParams(ProfileParams, FillSimParams):
    """A recorded-data venue for ``mode: backtest`` runs."""

    def manifest_problems(self, manifest: Any, spec: Any) -> list[tuple[tuple[str, ...], str]]:
        """What the manifest around these params makes unrunnable (checked by validate)."""
        if not self.data and not manifest.run.data:
            return [
                (
                    ("params", "data"),
                    "no recording given; set params.data on the exchange or run.data "
                    "(record one with `quoteforge record`)",
                )
            ]
        return []

    data: str | list[str] | None = Field(
        None,
        description="Recording file(s) (.jsonl or .jsonl.gz), merged in time order. "
        "Default: the manifest's run.data.",
    )
    protocol: WireProtocol = Field(
        description="Wire format of the recording: binance_spot, binance_futures or kraken_v2."
    )
    venue: str | None = Field(
        None, description="Replay only records of this recorded venue (default: all records)."
    )
    markets: dict[str, ReplayMarketParams] = Field(
        min_length=1,
        description="Markets by symbol with their grid: no REST in a backtest, so tick, "
        "order step and minimums are given here.",
    )
    maker_fee_bps: Decimal | None = Field(
        Decimal(0),
        gt=-10_000,
        lt=10_000,
        description="Maker fee in bps of notional; negative is a rebate (under 100% either way).",
    )
    taker_fee_bps: Decimal | None = Field(
        Decimal(5),
        gt=-10_000,
        lt=10_000,
        description="Taker fee in bps of notional (under 100% either way).",
    )
    extra_latency_ms: float = Field(
        0.0,
        ge=0,
        le=3_600_000,
        description="Added to every recorded receive time: the strategy sees the data later "
        "than the recorder did (a slower machine or link).",
    )
    notify: Literal["every", "top", "best"] = Field(
        "top",
        description="When the run (and so the strategy) hears of a book change: every "
        "applied message; top: the best 5 levels of a side changed; best: the best bid or "
        "ask price or size changed.",
    )
    stale_after_ms: float | None = Field(
        5_000.0,
        gt=0,
        description="Mark a book STALE after this much recorded silence (None: never).",
    )
    depth: int = Field(
        10, ge=1, le=1000, description="Kraken only: the book depth that was subscribed."
    )
    stop_at_end: bool = Field(
        True, description="Stop the run when the recording ends (before the duration)."
    )

    @field_validator("depth")
    @classmethod
    def _kraken_depth(cls, value: int) -> int:
        if value not in KRAKEN_DEPTHS:
            raise ValueError(f"depth must be one of {KRAKEN_DEPTHS}, got {value}")
        return value

    @model_validator(mode="after")
    def _symbols(self) -> ReplayParams:
        for symbol, market in self.markets.items():
            if symbol.count("/") != 1 or not all(symbol.split("/")):
                raise ValueError(f"market {symbol!r}: symbols are BASE/QUOTE, e.g. BTC/USDT")
            lot = self.qty_resolution(market)
            if market.step % lot:
                raise ValueError(
                    f"market {symbol!r}: order step {market.step} is finer than the "
                    f"{self.protocol} quantity precision {lot}; set qty_decimals to the "
                    "decimals the recording's quantities have"
                )
        return self

    def qty_resolution(self, market: ReplayMarketParams) -> Decimal:
        """The quantity unit a market's recorded values are read at."""
        decimals = market.qty_decimals
        if decimals is None:
            decimals = PROTOCOL_QTY_DECIMALS[self.protocol]
        return Decimal(1).scaleb(-decimals)


class _ReplayMarket:
    """One market: its book source, exact trade parsers and what the strategy last saw."""

    __slots__ = (
        "book",
        "instrument",
        "last_best",
        "last_top",
        "price",
        "price_table",
        "qty",
        "qty_table",
        "source",
        "symbol",
    )

    def __init__(self, instrument: Instrument, source: BookSource) -> None:
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.source = source
        self.book = source.book
        self.last_top = -1
        self.last_best: tuple[Any, Any] = (None, None)
        self.price = WireDecimalParser(instrument.tick_size, "price", instrument.key)
        self.qty = WireDecimalParser(instrument.lot_size, "quantity", instrument.key)
        self.price_table = self.price.scale_table()
        self.qty_table = self.qty.scale_table()


def _resolve_paths(data: str | list[str] | None, ctx: VenueContext) -> list[Path]:
    if data is None:
        data = ctx.extra.get("data")
    if not data:
        raise ValueError(
            f"replay exchange {ctx.name!r}: no recording given; set params.data on the "
            "exchange or run.data in the manifest (record one with `quoteforge record`)"
        )
    names = [data] if isinstance(data, str | Path) else list(data)
    bases = [Path.cwd()]
    manifest_dir = ctx.extra.get("manifest_dir")
    if manifest_dir:
        bases.append(Path(manifest_dir))
    paths = []
    for name in names:
        path = Path(name).expanduser()
        candidates = [path] if path.is_absolute() else [base / path for base in bases]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            where = ", ".join(str(c) for c in candidates)
            raise ValueError(
                f"replay exchange {ctx.name!r}: recording {str(name)!r} not found (looked "
                f"at {where}); check run.data / params.data"
            )
        paths.append(found)
    return paths


class ReplayExchange(SimulatedVenue[ReplayParams]):
    """Replays a recording: each message reaches its book source at its recorded
    receive time (shifted onto the run's clock, plus ``extra_latency_ms``); public
    trades and book changes drive the fill simulator before the run sees them."""

    Params: ClassVar[type[ReplayParams]] = ReplayParams
    simulated = True  # its matching engine runs inside the adapter

    def __init__(self, params: ReplayParams, ctx: VenueContext) -> None:
        extra_ms = params.extra_latency_ms
        fills = FillSimulator(
            ctx.name,
            ctx.clock,
            params,
            ctx.seed,
            view_lag_ms=params.latency.market_data_ms + extra_ms,
        )
        # Our orders are the fill simulator's: its reports are the venue's.
        super().__init__(params, ctx, fills.reports)
        self.fills = fills
        self.paths = _resolve_paths(params.data, ctx)
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, L2Book] = {}
        self._markets: dict[str, _ReplayMarket] = {}
        self._by_wire: dict[str, _ReplayMarket] = {}
        self._extra_ns = int(extra_ms * 1_000_000)
        self._notify = params.notify
        self._binance = params.protocol != "kraken_v2"
        wanted = [s for s in ctx.symbols if s in params.markets] or list(params.markets)
        for symbol in wanted:
            self._add_market(symbol, params.markets[symbol])
        self._batches: Iterator[list[RecordTuple]] | None = None
        self._batch: list[RecordTuple] = []
        self._next = 0  # index in _batch of the next record to play
        # stream name -> the handler of its payload texts (see _route)
        self._routes: dict[str, Callable[[str], Any]] = {}
        self._offset = 0
        self._timer: TimerHandle | None = None
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.records = 0
        self.malformed = 0
        self.unrouted = 0
        self.finished = False
        self._init_limits()

    @classmethod
    def declared_symbols(cls, params: ReplayParams) -> list[str]:
        return list(params.markets)

    def _add_market(self, symbol: str, mp: ReplayMarketParams) -> None:
        p = self.params
        base, quote = symbol.split("/")
        inst = Instrument(
            venue=self.name,
            symbol=symbol,
            base=base,
            quote=quote,
            tick_size=mp.tick_size,
            lot_size=p.qty_resolution(mp),
            qty_step=mp.step,
            min_qty=mp.min_qty,
            min_notional=mp.min_notional,
            maker_fee=(p.maker_fee_bps or Decimal(0)) * BPS,
            taker_fee=(p.taker_fee_bps or Decimal(0)) * BPS,
        )
        kwargs: dict[str, Any] = {
            "clock": self.clock,
            "stale_after_ms": p.stale_after_ms,
            "wire_symbol": mp.wire_symbol,
        }
        if p.protocol == "kraken_v2":
            kwargs["depth"] = p.depth
        source = _SOURCES[p.protocol](inst, **kwargs)
        market = _ReplayMarket(inst, source)
        source.add_observer(self._state_changed)
        self.instruments[symbol] = inst
        self.books[symbol] = source.book
        self._markets[symbol] = market
        wire = getattr(source, "wire_symbol", symbol)
        self._by_wire[wire.lower() if self._binance else wire] = market
        self.fills.add_market(inst, source.book)
        source.on_update = self._book_listener(market)

    # -- adapter contract --------------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        self._attach(sink)
        batches = record_batches(self.paths, self.params.venue)
        self._batches = batches
        self._batch = next(batches, [])
        self._next = 0
        if not self._batch:
            logger.warning("{}: {} holds no records to replay", self.name, self._files())
            self._end_of_data("the recording is empty")
            return
        first_ns = self._batch[0][0]
        self.first_ns = first_ns
        self._offset = self.clock.now_ns() - first_ns + self._extra_ns
        self._timer = self.clock.call_at(first_ns + self._offset, self._pump)
        if self.params.stale_after_ms is not None:
            for market in self._markets.values():
                market.source.states.start_watchdog()

    def submit(self, actions: Sequence[OrderAction]) -> None:
        if self.limits is not None:
            actions = self._within_limits(actions)
        self.fills.submit(actions)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # A replay running inline stops after the record it is playing.
        self._batches = None
        self._batch = []
        self._stop_watchdogs()
        self._attach(None)

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        return self.fills.open_orders()

    @property
    def replay_time_ns(self) -> int:
        """The recorded receive time the replay has reached (what the clock maps to)."""
        return self.clock.now_ns() - self._offset

    # -- the replay loop -----------------------------------------------------------------------
    def _pump(self) -> None:
        """Play the records due now, then the following ones for as long as each would
        be the clock's next event anyway (``Clock.run_inline``); schedule the first
        one that is not."""
        batch = self._batch
        i = self._next
        n = len(batch)
        offset = self._offset
        clock = self.clock
        now = clock.now_ns()
        run_inline = clock.run_inline
        routes = self._routes
        route = self._route
        # ``records`` and ``last_ns`` are written back when the loop hands control on.
        played = self.records
        last_ns = self.last_ns
        try:
            while True:
                if i >= n:
                    batches = self._batches
                    if batches is None:
                        return
                    try:
                        batch = next(batches, [])
                    except (RecordingError, OSError) as exc:
                        self._batch = []
                        self._next = 0
                        self.records = played
                        logger.error("{}: replay stopped: {}", self.name, exc)
                        self._incomplete(f"{self.name}: recording unreadable: {exc}")
                        self._end_of_data(f"recording unreadable: {exc}")
                        return
                    if not batch:
                        self._batch = []
                        self._next = 0
                        self.records = played
                        self._end_of_data("end of recorded data")
                        return
                    self._batch = batch
                    i = 0
                    n = len(batch)
                t_ns, _, stream, raw = batch[i]
                when = t_ns + offset
                if when > now:
                    if not run_inline(when):
                        self._next = i
                        self._timer = clock.call_at(when, self._pump)
                        return
                    now = when
                i += 1
                played += 1
                last_ns = t_ns
                handler = routes.get(stream)
                if handler is None:
                    handler = route(stream)
                try:
                    handler(raw)
                except BookMessageError as exc:
                    self._warn_malformed(stream, t_ns, exc)
                if self._batch is not batch:
                    return  # the replay ended or was closed inside the handler
        finally:
            self.records = played
            self.last_ns = last_ns

    def _route(self, stream: str) -> Callable[[str], Any]:
        """The handler of the payload texts of ``stream``. It depends on the stream name
        only, so it is worked out once per name; streams whose records must be looked
        at one by one (snapshots, combined-stream envelopes, unknown markets) get
        ``_dispatch_binance``."""
        handler: Callable[[str], Any] = partial(self._dispatch_binance, stream)
        if not self._binance:
            handler = self._dispatch_kraken
        elif not stream.startswith("rest:") and "@" in stream:
            native, _, kind = stream.partition("@")
            market = self._by_wire.get(native.lower())
            if market is not None and kind.startswith("depth"):
                handler = market.source.on_message
            elif market is not None and kind.startswith(("trade", "aggTrade")):
                handler = partial(self._binance_trade, market)
        self._routes[stream] = handler
        return handler

    def _dispatch_binance(self, stream: str, raw: str) -> None:
        if stream.startswith("rest:"):
            if "depth" not in stream:
                self.unrouted += 1
                return
            market = self._snapshot_market(stream)
            if market is not None and isinstance(market.source, BinanceSpotBookSource):
                market.source.on_snapshot(raw)
            return
        if "@" not in stream and raw.startswith('{"stream":"'):
            # A whole combined-stream message recorded under one connection name.
            stream = raw[11 : raw.find('"', 11)]
        native, _, kind = stream.partition("@")
        market = self._by_wire.get(native.lower())
        if market is None:
            self.unrouted += 1
            return
        if kind.startswith("depth"):
            market.source.on_message(raw)
        elif kind.startswith(("trade", "aggTrade")):
            self._binance_trade(market, raw)
        else:
            self.unrouted += 1

    def _snapshot_market(self, stream: str) -> _ReplayMarket | None:
        _, found, rest = stream.partition("symbol=")
        if found:
            market = self._by_wire.get(rest.split("&")[0].lower())
            if market is None:
                self.unrouted += 1
            return market
        if len(self._markets) == 1:
            return next(iter(self._markets.values()))
        self._warn_unrouted(
            stream, "a depth snapshot without symbol= cannot be routed among several markets"
        )
        return None

    def _binance_trade(self, market: _ReplayMarket, raw: str) -> None:
        if _trade_text is not None:
            # The plain message in one compiled call; anything else is decoded below.
            read = _trade_text(raw, market.price_table, market.qty_table)
            if read is not None:
                self._trade(market, read[0], read[1], Side.SELL if read[2] else Side.BUY)
                return
        try:
            msg = _decode(raw)
        except ValueError as exc:
            raise BookMessageError(
                f"{market.instrument.key}: trade message is not JSON ({exc})"
            ) from None
        if type(msg) is dict and "data" in msg:
            msg = msg["data"]
        try:
            price = market.price(msg["p"])
            qty = market.qty(msg["q"])
            # "m": the buyer was the maker, so the seller was the aggressor.
            aggressor = Side.SELL if msg["m"] else Side.BUY
        except (KeyError, TypeError) as exc:
            raise BookMessageError(
                f"{market.instrument.key}: trade message needs p, q and m ({exc})"
            ) from None
        self._trade(market, price, qty, aggressor)

    def _dispatch_kraken(self, raw: str) -> None:
        if '"channel":"trade"' in raw:
            self._kraken_trades(raw)
            return
        for market in self._markets.values():
            market.source.on_message(raw)

    def _kraken_trades(self, raw: str) -> None:
        # Numbers stay text so they convert to ticks and lots exactly.
        try:
            msg = json.loads(raw, parse_float=str, parse_int=str)
        except ValueError as exc:
            raise BookMessageError(f"trade message is not JSON ({exc})") from None
        if type(msg) is not dict or type(msg.get("data") or []) is not list:
            raise BookMessageError("trade message must be an object with a 'data' list")
        for entry in msg.get("data") or ():
            if type(entry) is not dict:
                raise BookMessageError("each trade in 'data' must be an object")
            market = self._by_wire.get(entry.get("symbol", ""))
            if market is None:
                continue
            try:
                price = market.price(entry["price"])
                qty = market.qty(entry["qty"])
                aggressor = Side.parse(entry["side"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BookMessageError(
                    f"{market.instrument.key}: trade entry needs price, qty and side ({exc})"
                ) from None
            self._trade(market, price, qty, aggressor)

    def _trade(self, market: _ReplayMarket, price: int, qty: int, aggressor: Side) -> None:
        self.fills.on_trade(market.symbol, price, qty, aggressor)
        sink = self.sink
        if sink is not None:
            sink.on_trade(self.name, market.symbol, price, qty, aggressor, self.clock.now_ns())

    def _book_listener(self, market: _ReplayMarket) -> Callable[[L2Book], None]:
        """What the book source of ``market`` calls after each applied change: the fill
        simulator first, then the run, when the change is one the run hears of
        (``notify``) and the book is LIVE."""
        fills_changed = self.fills.book_watcher(market.symbol)
        book = market.book
        notify = self._notify

        def changed(_book: L2Book) -> None:
            fills_changed()
            sink = self.sink
            if sink is None or book.state is not _LIVE:
                return
            if notify == "top":
                if book.top_version == market.last_top:
                    return
                market.last_top = book.top_version
            elif notify == "best":
                best = (book.best_bid(), book.best_ask())
                if best == market.last_best:
                    return
                market.last_best = best
            sink.on_book(book)

        return changed

    def _state_changed(self, book: L2Book, old: BookState, new: BookState, reason: str) -> None:
        self.fills.on_book_state(book.symbol, new)
        if self.sink is not None:
            self.sink.on_book_state(book, old.value, new.value, reason)

    def _end_of_data(self, reason: str) -> None:
        self.finished = True
        self._batches = None
        self._batch = []
        self._next = 0
        self._stop_watchdogs()
        logger.info(
            "{}: {} after {} records ({} malformed, {} not routed)",
            self.name,
            reason,
            self.records,
            self.malformed,
            self.unrouted,
        )
        never = [s for s, m in self._markets.items() if not m.source.book.ts_ns]
        if self.records and never:
            logger.warning(
                "{}: {} record(s) played, but no book of {} ever started: check that "
                "protocol: {} and the markets' symbols fit {}",
                self.name,
                self.records,
                ", ".join(never),
                self.params.protocol,
                self._files(),
            )
        stop = getattr(self.sink, "request_stop", None)
        if self.params.stop_at_end and callable(stop):
            stop(f"{self.name}: {reason}")

    def _incomplete(self, why: str) -> None:
        """Mark the run's result partial (run.json ``incomplete``; ``quoteforge run``
        exits 1): the recording did not end, it broke off."""
        info = getattr(self.sink, "run_info", None)
        if isinstance(info, dict):
            info["incomplete"] = why

    def _stop_watchdogs(self) -> None:
        for market in self._markets.values():
            market.source.states.stop_watchdog()

    def _files(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def _warn_malformed(self, stream: str, t_ns: int, exc: Exception) -> None:
        self.malformed += 1
        if self.malformed <= _WARN_LIMIT:
            logger.warning(
                "{}: skipped a malformed {} message at t={}: {}",
                self.name,
                stream,
                t_ns,
                exc,
            )

    def _warn_unrouted(self, stream: str, why: str) -> None:
        self.unrouted += 1
        if self.unrouted <= _WARN_LIMIT:
            logger.warning("{}: record on {!r} skipped: {}", self.name, stream, why)

    # -- venue profile -----------------------------------------------------------------------
    def _init_limits(self) -> None:
        self.limits = limits_for(self.params, lambda symbol: len(self._resting(symbol)))
        self._fills_seen = 0
        logger.info(describe_limits(self.name, self.params))

    def _within_limits(self, actions: Sequence[OrderAction]) -> list[OrderAction]:
        """Charge actions to the venue profile's limits as they are sent (the venue
        counts them an order latency later; the count is the same) and report what the
        limits refuse, one round trip later, as the venue would."""
        limits = self.limits
        assert limits is not None
        now = self.clock.now_ns()
        fills = self.fills.fills
        for fill in fills[self._fills_seen :]:
            limits.filled(fill.client_id, now)
        self._fills_seen = len(fills)
        passed: list[OrderAction] = []
        for action in actions:
            left, refusals = screen(limits, action, now, self._markets, self._resting)
            if left is not None:
                passed.append(left)
            for refusal in refusals:
                working = self._resting(refusal.symbol).get(refusal.client_id)
                self._refused(refusal, working.filled if working is not None else 0)
        return passed

    def report_at(self, market: object) -> int:
        # Only refusals are reported here (the fill simulator reports the rest): the
        # venue's answer, one order round trip after the request was sent.
        return self.clock.now_ns() + int(2 * self.params.latency.order_ms * 1_000_000)

    def _resting(self, symbol: str) -> dict[str, Any]:
        market = self.fills.markets.get(symbol)
        return {} if market is None else market.orders


@quoteforge.hookimpl
def quoteforge_register_exchanges(register: Register) -> None:
    register(
        "replay",
        ReplayExchange,
        params=ReplayParams,
        description="Recorded market data replayed in virtual time; queue-aware simulated "
        "fills (backtest).",
    )
