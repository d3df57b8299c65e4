"""Binance diff-depth books (spot ``<symbol>@depth`` and USD-M futures): buffer, bridge
to a REST snapshot by update id, then chain every event or resync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field

from quoteforge.book.l2 import BookState, L2Book
from quoteforge.book.source import BookMessageError, BookSource, BookSourceParams, Outcome
from quoteforge.book.wire import MAX_INTEGER_DIGITS
from quoteforge.exchanges.binance.fast import apply_depth_text as _apply_depth_text

_LIVE = BookState.LIVE
_APPLIED = Outcome.APPLIED
_DROPPED = Outcome.DROPPED
_INT64 = 1 << 63

_decode: Callable[[str | bytes], Any]
try:  # orjson is several times faster than the stdlib decoder; both are exact here
    import orjson

    _decode = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    import json

    _decode = json.loads

__all__ = [
    "BINANCE_WIRE_DECIMALS",
    "BinanceBookParams",
    "BinanceFuturesBookSource",
    "BinanceSpotBookSource",
]


BINANCE_WIRE_DECIMALS = 8
"""Binance writes prices and quantities with at most 8 decimals (spot: always 8)."""

#: Keys a depth message carries once (a repeated one could move the update id).
_ONCE_TEXT = ('"U"', '"u"', '"pu"', '"E"', '"s"', '"b"', '"a"')
_ONCE_BYTES = tuple(k.encode() for k in _ONCE_TEXT)

SPOT_MAX_ID_JUMP = 200_000
SPOT_MAX_IDS_PER_SECOND = 2_000_000
FUTURES_MAX_ID_JUMP = 50_000_000
FUTURES_MAX_IDS_PER_SECOND = 200_000_000
# Measured on real traffic (docs/real-data.md): spot BTCUSDT @100ms moved at most 1,466
# ids per event and 14,305 per second, USD-M ETHUSDT @0ms (ids shared by every symbol
# of the venue) 276,669 per event and 827,524 per second. The defaults leave >100x.


class BinanceBookParams(BookSourceParams):
    max_buffer: int = Field(
        10_000,
        ge=1,
        description="Diff events kept while waiting for a snapshot; the oldest go first.",
    )
    max_id_jump: int | None = Field(
        None,
        ge=0,
        description=(
            "Most update ids one event may move the book (forward, or back for a dropped "
            "event) with no time elapsed; None: the venue default (spot 200000, futures "
            "50000000)."
        ),
    )
    max_ids_per_second: int | None = Field(
        None,
        ge=0,
        description=(
            "Further ids allowed per second since the last applied event; None: the venue "
            "default (spot 2000000, futures 200000000)."
        ),
    )


def _crossed(book: L2Book) -> bool:
    """Best bid at or above best ask (ask keys are negated ticks): O(1)."""
    bids, asks = book._bid_keys, book._ask_keys
    return bool(bids) and bool(asks) and bids[-1] + asks[-1] >= 0


class BinanceSpotBookSource(BookSource):
    """Binance spot diff depth, following Binance's local order book procedure.

    Until a snapshot is applied every ``depthUpdate`` is buffered and ``on_resync``
    asks for ``GET /api/v3/depth``. ``on_snapshot`` drops buffered events with
    ``u <= lastUpdateId``; the first one left must satisfy
    ``U <= lastUpdateId + 1 <= u`` or the snapshot is too old and another is asked
    for. Live, an event with ``u`` at or below the last applied id is a duplicate and
    is dropped; one whose ``U`` is beyond the last id + 1 is a gap: the book goes
    RESYNCING and buffering starts again from that event.

    What Binance cannot check for us is checked too: a book crossed or locked after a
    diff or a snapshot, an update id that moves further than the stream ever does
    (``max_id_jump`` plus ``max_ids_per_second`` since the last applied event, either
    way), and any message that cannot be read are desyncs: the book goes RESYNCING
    and a new snapshot is asked for. Only applied events count as activity for the
    staleness watchdog, so a stream whose events are all dropped goes STALE.
    """

    protocol: ClassVar[str] = "binance_spot"
    Params: ClassVar[type[BinanceBookParams]] = BinanceBookParams
    wire_decimals: ClassVar[int | None] = BINANCE_WIRE_DECIMALS
    _futures: ClassVar[bool] = False
    _default_max_id_jump: ClassVar[int] = SPOT_MAX_ID_JUMP
    _default_max_ids_per_second: ClassVar[int] = SPOT_MAX_IDS_PER_SECOND

    def __init__(
        self,
        *args: Any,
        max_buffer: int = 10_000,
        max_id_jump: int | None = None,
        max_ids_per_second: int | None = None,
        wire_symbol: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        if max_id_jump is None:
            max_id_jump = self._default_max_id_jump
        if max_ids_per_second is None:
            max_ids_per_second = self._default_max_ids_per_second
        bounds = (("max_id_jump", max_id_jump), ("max_ids_per_second", max_ids_per_second))
        for name, value in bounds:
            if type(value) is not int or not 0 <= value < _INT64:
                raise ValueError(
                    f"{self.book.key}: {name} must be an integer in [0, 2**63), got {value!r}"
                )
        self.max_buffer = max_buffer
        self.max_id_jump = max_id_jump
        self.max_ids_per_second = max_ids_per_second
        # Instruments may be named "BTC/USDT" or "btcusdt"; the wire says "BTCUSDT".
        self.wire_symbol = wire_symbol or (
            self.book.symbol.replace("/", "").replace("-", "").replace("_", "").upper()
        )
        self.last_update_id: int | None = None
        self._buffer: list[dict[str, Any]] = []
        self._buffered_ns = 0  # when the newest buffered event arrived
        self._applied_ns = 0  # when the last event (or the snapshot) was applied
        self._chained = False  # futures: the first event after a snapshot has been applied
        self._price_table = self._price.scale_table()
        self._qty_table = self._qty.scale_table()

    # -- wire ----------------------------------------------------------------------------
    def on_message(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        self.stats.messages += 1
        book = self.book
        now = recv_ns if recv_ns is not None else self._now(None)
        try:
            if _apply_depth_text is not None and book.state is _LIVE and not self._needs_snapshot:
                # The common case in one compiled call: a live book and an event in the
                # plain Binance spelling that is either already covered or chains on
                # within the id bounds. It reads the text itself and decides exactly as
                # below (None: anything else).
                done = _apply_depth_text(
                    raw,
                    self.wire_symbol,
                    self.last_update_id,
                    self._futures,
                    self._chained,
                    book._bid_keys,
                    book._bid_qty,
                    book._ask_keys,
                    book._ask_qty,
                    self._price_table,
                    self._qty_table,
                    self.max_id_jump,
                    self.max_ids_per_second,
                    now - self._applied_ns,
                )
                if done is not None:
                    code, final, ts_ns = done
                    if code < 0:
                        self.stats.dropped += 1
                        return _DROPPED
                    self.last_update_id = final
                    self._chained = True
                    if code > 15:
                        book._applied(code & 15, ts_ns)
                        return self._crossed_book(final)
                    book._applied(code, ts_ns)
                    self.states.last_message_ns = self._applied_ns = now
                    self.stats.applied += 1
                    outcome = _APPLIED
                else:
                    outcome = self._read(raw, now)
            else:
                outcome = self._read(raw, now)
        except MemoryError:
            raise
        except Exception as exc:  # nothing a venue sends may escape
            raise self._unreadable(exc, raw, "depth message") from None
        if outcome is _APPLIED and self.on_update is not None:
            self.on_update(book)
        return outcome

    def _read(self, raw: str | bytes, now: int) -> Outcome:
        """The interpreted path: decode the text, then decide as ``_process`` does."""
        try:
            msg = _decode(raw)
        except ValueError as exc:
            raise self._malformed(f"depth message is not JSON ({exc})", raw) from None
        if type(msg) is not dict or msg.get("e") != "depthUpdate":
            msg = self._unwrap(msg, raw)
            if msg is None:
                self.stats.ignored += 1
                return Outcome.IGNORED
        symbol = msg.get("s")
        if symbol != self.wire_symbol and symbol is not None:
            self.stats.ignored += 1
            return Outcome.IGNORED
        # The decoder keeps the last of a repeated key; the compiled path refuses them.
        texts = _ONCE_TEXT if isinstance(raw, str) else _ONCE_BYTES
        repeated = [k for k, t in zip(_ONCE_TEXT, texts, strict=True) if raw.count(t) > 1]  # type: ignore[arg-type]
        if repeated:
            raise self._malformed(f"depth message repeats the key {repeated[0]!r}", raw)
        return self._process(msg, now)

    def _unwrap(self, msg: object, raw: str | bytes) -> dict[str, Any] | None:
        """The depthUpdate inside a combined-stream envelope, or None for other
        messages (subscription answers)."""
        if type(msg) is not dict:
            raise self._malformed("depth message must be a JSON object", raw)
        if "stream" in msg and "data" in msg:
            data = msg["data"]
            if type(data) is not dict:
                raise self._malformed("combined-stream 'data' must be an object", raw)
            return data if data.get("e") == "depthUpdate" else None
        return None

    def on_snapshot(self, raw: str | bytes | dict[str, Any], recv_ns: int | None = None) -> Outcome:
        """Apply a REST depth snapshot (``{"lastUpdateId": .., "bids": .., "asks": ..}``)
        and replay the buffered events that follow it.

        A snapshot that is crossed or locked, or whose ``lastUpdateId`` is further
        ahead of the buffered events than the id bounds allow, is not applied: another
        one is asked for (``Outcome.RESYNC``).
        """
        now = self._now(recv_ns)
        try:
            outcome = self._snapshot(raw, now)
        except BookMessageError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # nothing a venue sends may escape
            raise self._malformed(
                f"depth snapshot could not be read ({type(exc).__name__})", raw
            ) from None
        if outcome is Outcome.APPLIED and self.on_update is not None:
            self.on_update(self.book)
        return outcome

    def _snapshot(self, raw: str | bytes | dict[str, Any], now: int) -> Outcome:
        if isinstance(raw, dict):
            snap = raw
        else:
            try:
                snap = _decode(raw)
            except ValueError as exc:
                raise self._malformed(f"depth snapshot is not JSON ({exc})", raw) from None
        if type(snap) is not dict:
            raise self._malformed("depth snapshot must be a JSON object", raw)
        last_id = snap.get("lastUpdateId")
        if type(last_id) is not int or last_id < 0:
            raise self._malformed("depth snapshot needs an integer 'lastUpdateId' >= 0", snap)
        bids = self._levels(snap.get("bids"), "bids", snap)
        asks = self._levels(snap.get("asks"), "asks", snap)
        self.stats.snapshots += 1
        if self._buffer:
            newest = self._buffer[-1]["u"]
            allowance = self._allowance(now - self._buffered_ns)
            if last_id - newest > allowance:
                self.stats.implausible_ids += 1
                self._request_resync(
                    f"snapshot lastUpdateId={last_id} is {last_id - newest} ids ahead of the "
                    f"newest buffered event (u={newest}; at most {allowance} plausible); "
                    "fetching another snapshot"
                )
                return Outcome.RESYNC
        best_bid = max((p for p, q in bids if q > 0), default=None)
        best_ask = min((p for p, q in asks if q > 0), default=None)
        if best_bid is not None and best_ask is not None and best_bid >= best_ask:
            self.stats.crossed += 1
            self._request_resync(
                f"snapshot lastUpdateId={last_id} is crossed: best bid "
                f"{self.instrument.ticks_to_price(best_bid)} >= best ask "
                f"{self.instrument.ticks_to_price(best_ask)}; fetching another snapshot"
            )
            return Outcome.RESYNC
        buffer = [
            m for m in self._buffer if (m["u"] >= last_id if self._futures else m["u"] > last_id)
        ]
        if buffer:
            first_u = buffer[0]["U"]
            bridge = last_id if self._futures else last_id + 1
            if first_u > bridge:
                self._buffer = buffer
                self._request_resync(
                    f"snapshot lastUpdateId={last_id} is older than the first buffered "
                    f"event (U={first_u}); fetching another snapshot",
                    count=False,
                )
                return Outcome.RESYNC
        ts_ns = snap.get("E", 0) * 1_000_000 if type(snap.get("E")) is int else 0
        self.book.apply_snapshot(bids, asks, ts_ns or now)
        self.last_update_id = last_id
        self._chained = False
        self._buffer = []
        self._mark_live(f"snapshot lastUpdateId={last_id} applied")
        self.states.last_message_ns = self._applied_ns = now
        outcome = Outcome.APPLIED
        for i, msg in enumerate(buffer):
            if self._process(msg, now) is Outcome.RESYNC:
                # A gap event is buffered already; keep what came after it too.
                if self._buffer:
                    self._buffer.extend(buffer[i + 1 :])
                outcome = Outcome.RESYNC
                break
        return outcome

    # -- internals -----------------------------------------------------------------------
    def _allowance(self, elapsed_ns: int) -> int:
        """How many ids the stream may plausibly move in ``elapsed_ns``."""
        return self.max_id_jump + self.max_ids_per_second * max(0, elapsed_ns) // 1_000_000_000

    def _process(self, msg: dict[str, Any], now: int) -> Outcome:
        try:
            first = msg["U"]
            final = msg["u"]
        except KeyError as exc:
            raise self._malformed(f"depthUpdate without {exc.args[0]!r}", msg) from None
        if type(first) is not int or type(final) is not int or not 0 <= first <= final:
            raise self._malformed("depthUpdate needs integer ids with 0 <= U <= u", msg)
        last = self.last_update_id
        if last is None or self._needs_snapshot:
            return self._buffer_event(msg, now)
        if self._futures:
            covered = final < last or (final == last and self._chained)
        else:
            covered = final <= last
        allowance = self._allowance(now - self._applied_ns)
        distance = last - final if covered else final - last
        if distance > allowance:
            return self._implausible(final, last, distance, allowance)
        if covered:
            self.stats.dropped += 1
            return Outcome.DROPPED
        if self._futures:
            ok = msg.get("pu") == last if self._chained else first <= last <= final
        else:
            # Levels are absolute quantities, so an event overlapping what is already
            # applied (U <= last) is safe to apply again; only a hole is fatal.
            ok = first <= last + 1
        if not ok:
            return self._gap(msg, last, first, final, now)
        book = self.book
        event_ms = msg.get("E")
        ts_ns = event_ms * 1_000_000 if type(event_ms) is int else None
        if (
            book._apply_text(msg.get("b"), msg.get("a"), self._price_table, self._qty_table, ts_ns)
            is None
        ):
            bids, asks = self._convert(msg)
            book._apply_keyed(bids, asks, ts_ns)
        self.last_update_id = final
        self._chained = True
        if _crossed(book):
            return self._crossed_book(final)
        self.states.last_message_ns = self._applied_ns = now
        self.stats.applied += 1
        if book.state is not _LIVE:
            self._mark_live("messages resumed in sequence")
        return _APPLIED

    def _crossed_book(self, final: int) -> Outcome:
        """The event just applied left the book crossed or locked: a desync. The event
        is not kept for replay (a snapshot after it replaces the book)."""
        self._resync_if_crossed(f"book crossed after update u={final}")
        self._buffer = []
        return Outcome.RESYNC

    def _implausible(self, final: int, last: int, distance: int, allowance: int) -> Outcome:
        """An update id further from the book's than the stream ever moves: either the
        event or the book's id is wrong, so neither is trusted."""
        self.stats.implausible_ids += 1
        self._buffer = []
        way = "ahead of" if final > last else "behind"
        self._request_resync(
            f"implausible update id: u={final} is {distance} ids {way} the last applied "
            f"id {last} (at most {allowance} plausible; see max_id_jump and "
            "max_ids_per_second)"
        )
        return Outcome.RESYNC

    def _gap(self, msg: dict[str, Any], last: int, first: int, final: int, now: int) -> Outcome:
        self.stats.gaps += 1
        self._buffer = []
        if self._futures and self._chained:
            detail = f"expected pu={last}, got pu={msg.get('pu')}"
        else:
            detail = f"expected U<={last + 1}, got U={first}"
        self._request_resync(f"sequence gap: {detail} (u={final})")
        self._buffer_event(msg, now)
        return Outcome.RESYNC

    def _buffer_event(self, msg: dict[str, Any], now: int) -> Outcome:
        # Validate now so a malformed event never reaches the book at replay time.
        self._convert(msg)
        buffer = self._buffer
        if len(buffer) >= self.max_buffer:
            del buffer[0]
        buffer.append(msg)
        self._buffered_ns = now
        self.stats.buffered += 1
        self._request_first_snapshot()
        return Outcome.BUFFERED

    def reset_stream(self) -> None:
        self._buffer = []
        self.last_update_id = None

    def _convert(self, msg: dict[str, Any]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Wire levels -> (bid (ticks, lots), ask (-ticks, lots)), all or nothing.

        The interpreted path: the compiled one (``quoteforge.exchanges.binance.fast``) hands every
        message it does not read itself to this one, and without the extension it is
        the only one.
        """
        try:
            if type(msg["b"]) is not list or type(msg["a"]) is not list:
                raise TypeError("'b' and 'a' must be lists of levels")
            return self._convert_side(msg["b"], 1), self._convert_side(msg["a"], -1)
        except KeyError as exc:
            raise self._malformed(f"depthUpdate without {exc.args[0]!r}", msg) from None
        except (TypeError, ValueError) as exc:
            raise self._malformed(
                f"bad level in depthUpdate ({exc}); levels are [price, qty] strings", msg
            ) from None

    def _convert_side(self, levels: list[Any], sign: int) -> list[tuple[int, int]]:
        """One side's [price, qty] texts as (sign * ticks, lots); raises on a bad level."""
        pget = self._price.cache.get
        pc = self._price.parse
        qc = self._qty.parse
        # Sizes rarely repeat, so they skip the cache: the point is cut out and the
        # digits divided by the lot size in one integer step (exact, remainder 0).
        qdiv = self._qty.divisors.get
        out: list[tuple[int, int]] = []
        for level in levels:
            # A two-character string would unpack as a "level" too.
            if type(level) is not list:
                raise TypeError(f"level {level!r} is not a [price, qty] list")
            p, q = level
            t = pget(p)
            if t is None:
                t = pc(p)
            n = -1
            if type(q) is str:
                # The wire rule of WireDecimalParser.parse, for the spelling Binance
                # always sends (with a point); anything else goes to parse().
                head, point, tail = q.partition(".")
                div = qdiv(len(tail))
                if (
                    div is not None
                    and point
                    and 0 < len(head) <= MAX_INTEGER_DIGITS
                    and q.isascii()
                    and head.isdigit()
                    and tail.isdigit()
                ):
                    n, rest = divmod(int(head + tail), div)
                    if rest:
                        n = -1
            if n < 0:
                n = qc(q)  # the general parser: other spellings, or the clear error
            out.append((sign * t, n))
        return out

    def _levels(self, levels: object, name: str, snap: object) -> list[tuple[int, int]]:
        if type(levels) is not list:
            raise self._malformed(f"depth snapshot needs a '{name}' list", snap)
        pc = self._price
        qc = self._qty
        try:
            # A two-character string or a two-key object would unpack as a "level" too.
            if any(type(level) is not list for level in levels):
                raise TypeError("a level is not a [price, qty] list")
            return [(pc(p), qc(q)) for p, q in levels]
        except (TypeError, ValueError) as exc:
            raise self._malformed(
                f"bad level in snapshot {name} ({exc}); levels are [price, qty] strings", snap
            ) from None


class BinanceFuturesBookSource(BinanceSpotBookSource):
    """Binance USD-M / COIN-M futures diff depth: after the snapshot the first event
    must satisfy ``U <= lastUpdateId <= u`` (events with ``u < lastUpdateId`` are
    dropped), then each event's ``pu`` must equal the previous event's ``u``."""

    protocol: ClassVar[str] = "binance_futures"
    _futures: ClassVar[bool] = True
    _default_max_id_jump: ClassVar[int] = FUTURES_MAX_ID_JUMP
    _default_max_ids_per_second: ClassVar[int] = FUTURES_MAX_IDS_PER_SECOND
