"""Binance diff-depth books (spot ``<symbol>@depth`` and USD-M futures): buffer, bridge
to a REST snapshot by update id, then chain every event or resync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field

from quoteforge.book.fast import apply_depth_text as _apply_depth_text
from quoteforge.book.l2 import BookState
from quoteforge.book.source import BookSource, BookSourceParams, Outcome

_LIVE = BookState.LIVE
_APPLIED = Outcome.APPLIED
_DROPPED = Outcome.DROPPED

_decode: Callable[[str | bytes], Any]
try:  # orjson is several times faster than the stdlib decoder; both are exact here
    import orjson

    _decode = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    import json

    _decode = json.loads

__all__ = ["BinanceBookParams", "BinanceFuturesBookSource", "BinanceSpotBookSource"]


class BinanceBookParams(BookSourceParams):
    max_buffer: int = Field(
        10_000,
        ge=1,
        description="Diff events kept while waiting for a snapshot; the oldest go first.",
    )


class BinanceSpotBookSource(BookSource):
    """Binance spot diff depth, following Binance's local order book procedure.

    Until a snapshot is applied every ``depthUpdate`` is buffered and ``on_resync``
    asks for ``GET /api/v3/depth``. ``on_snapshot`` drops buffered events with
    ``u <= lastUpdateId``; the first one left must satisfy
    ``U <= lastUpdateId + 1 <= u`` or the snapshot is too old and another is asked
    for. Live, an event with ``u`` at or below the last applied id is a duplicate and
    is dropped; one whose ``U`` is beyond the last id + 1 is a gap: the book goes
    RESYNCING and buffering starts again from that event.
    """

    protocol: ClassVar[str] = "binance_spot"
    Params: ClassVar[type[BinanceBookParams]] = BinanceBookParams
    _futures: ClassVar[bool] = False

    def __init__(
        self,
        *args: Any,
        max_buffer: int = 10_000,
        wire_symbol: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        self.max_buffer = max_buffer
        # Instruments may be named "BTC/USDT" or "btcusdt"; the wire says "BTCUSDT".
        self.wire_symbol = wire_symbol or (
            self.book.symbol.replace("/", "").replace("-", "").replace("_", "").upper()
        )
        self.last_update_id: int | None = None
        self._buffer: list[dict[str, Any]] = []
        self._chained = False  # futures: the first event after a snapshot has been applied
        self._price_table = self._price.scale_table()
        self._qty_table = self._qty.scale_table()

    # -- wire ----------------------------------------------------------------------------
    def on_message(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        self.stats.messages += 1
        book = self.book
        if _apply_depth_text is not None and book.state is _LIVE and not self._needs_snapshot:
            # The common case in one compiled call: a live book and an event in the
            # plain Binance spelling that is either already covered or chains on. It
            # reads the text itself and decides exactly as below (None: anything else).
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
            )
            if done is not None:
                code, final, ts_ns = done
                self.states.last_message_ns = recv_ns if recv_ns is not None else self._now(None)
                if code < 0:
                    self.stats.dropped += 1
                    return _DROPPED
                book._applied(code, ts_ns)
                self.last_update_id = final
                self._chained = True
                self.stats.applied += 1
                if self.on_update is not None:
                    self.on_update(book)
                return _APPLIED
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
        self.states.last_message_ns = recv_ns if recv_ns is not None else self._now(None)
        return self._process(msg, True)

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
        and replay the buffered events that follow it."""
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
        if type(last_id) is not int:
            raise self._malformed("depth snapshot needs an integer 'lastUpdateId'", snap)
        bids = self._levels(snap.get("bids"), "bids", snap)
        asks = self._levels(snap.get("asks"), "asks", snap)
        self.stats.snapshots += 1
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
        self.book.apply_snapshot(bids, asks, ts_ns or self._now(recv_ns))
        self.last_update_id = last_id
        self._chained = False
        self._buffer = []
        self._mark_live(f"snapshot lastUpdateId={last_id} applied")
        self.states.last_message_ns = self._now(recv_ns)
        outcome = Outcome.APPLIED
        for i, msg in enumerate(buffer):
            if self._process(msg, False) is Outcome.RESYNC:
                # The gap event is buffered already; keep what came after it too.
                self._buffer.extend(buffer[i + 1 :])
                outcome = Outcome.RESYNC
                break
        if outcome is Outcome.APPLIED and self.on_update is not None:
            self.on_update(self.book)
        return outcome

    # -- internals -----------------------------------------------------------------------
    def _process(self, msg: dict[str, Any], notify: bool) -> Outcome:
        try:
            first = msg["U"]
            final = msg["u"]
        except KeyError as exc:
            raise self._malformed(f"depthUpdate without {exc.args[0]!r}", msg) from None
        if type(first) is not int or type(final) is not int or first > final:
            raise self._malformed("depthUpdate needs integer ids with U <= u", msg)
        last = self.last_update_id
        if last is None or self._needs_snapshot:
            return self._buffer_event(msg)
        if self._futures:
            if final < last or (final == last and self._chained):
                self.stats.dropped += 1
                return Outcome.DROPPED
            ok = msg.get("pu") == last if self._chained else first <= last <= final
        else:
            if final <= last:
                self.stats.dropped += 1
                return Outcome.DROPPED
            # Levels are absolute quantities, so an event overlapping what is already
            # applied (U <= last) is safe to apply again; only a hole is fatal.
            ok = first <= last + 1
        if not ok:
            return self._gap(msg, last, first, final)
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
        self.stats.applied += 1
        if book.state is not _LIVE:
            self._mark_live("messages resumed in sequence")
        if notify and self.on_update is not None:
            self.on_update(book)
        return Outcome.APPLIED

    def _gap(self, msg: dict[str, Any], last: int, first: int, final: int) -> Outcome:
        self.stats.gaps += 1
        self._buffer = []
        self._buffer_event(msg)
        if self._futures and self._chained:
            detail = f"expected pu={last}, got pu={msg.get('pu')}"
        else:
            detail = f"expected U<={last + 1}, got U={first}"
        self._request_resync(f"sequence gap: {detail} (u={final})")
        return Outcome.RESYNC

    def _buffer_event(self, msg: dict[str, Any]) -> Outcome:
        # Validate now so a malformed event never reaches the book at replay time.
        self._convert(msg)
        buffer = self._buffer
        if len(buffer) >= self.max_buffer:
            del buffer[0]
        buffer.append(msg)
        self.stats.buffered += 1
        self._request_first_snapshot()
        return Outcome.BUFFERED

    def _reset_stream(self) -> None:
        self._buffer = []
        self.last_update_id = None

    def _convert(self, msg: dict[str, Any]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Wire levels -> (bid (ticks, lots), ask (-ticks, lots)), all or nothing.

        The interpreted path: the compiled one (``quoteforge.book.fast``) hands every
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
                head, _, tail = q.partition(".")
                digits = head + tail
                div = qdiv(len(tail))
                if div is not None and digits.isascii() and digits.isdigit():
                    n, rest = divmod(int(digits), div)
                    if rest:
                        n = -1
            if n < 0:
                n = qc(q)  # the general parser: exponent forms, or the clear error
            out.append((sign * t, n))
        return out

    def _levels(self, levels: object, name: str, snap: object) -> list[tuple[int, int]]:
        if type(levels) is not list:
            raise self._malformed(f"depth snapshot needs a '{name}' list", snap)
        pc = self._price
        qc = self._qty
        try:
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
