"""The websockets of a live adapter: a socket that stays up (silence watchdog,
reconnect before the venue's connection lifetime ends, jittered backoff between
attempts) and the backoff itself.

Separate from the adapter base (``quoteforge.exchanges.ccxt_base``) because nothing here
knows about orders or ccxt: a venue adapter gets its sockets from
``CcxtSpotAdapter._spawn_socket`` and reads them through ``on_text``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Backoff", "ManagedSocket"]


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(max, base*2^n)],
    floored at a tenth of the base so reconnects never spin."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.max_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return max(self.base_s / 10, self.rng.uniform(0, cap))

    def reset(self) -> None:
        self.attempt = 0


class ManagedSocket:
    """A websocket that stays up: connects, hands frames to ``on_text``, treats silence
    as a dead link, reconnects early before the venue's lifetime limit, and backs off
    with jitter between attempts. It never raises out of ``run``."""

    def __init__(
        self,
        name: str,
        url: Callable[[], str],
        *,
        session: Callable[[], aiohttp.ClientSession],
        on_open: Callable[[ManagedSocket], Awaitable[None]],
        on_text: Callable[[str, int], Awaitable[None] | None],
        on_down: Callable[[str], None],
        backoff: Backoff,
        silence_timeout_s: float,
        max_age_s: float,
    ) -> None:
        self.name = name
        self._url = url
        self._session = session
        self._on_open = on_open
        self._on_text = on_text
        self._on_down = on_down
        self.backoff = backoff
        self.silence_timeout_s = silence_timeout_s
        self.max_age_s = max_age_s
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ready = asyncio.Event()
        self.connects = 0
        self.drops = 0
        self.scheduled_reconnects = 0
        self.last_reason = ""
        self._closing = False

    @property
    def is_up(self) -> bool:
        return self.ws is not None and not self.ws.closed and self.ready.is_set()

    async def send(self, text: str) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError(f"{self.name}: socket is not connected")
        await ws.send_str(text)

    async def request(self, text: str, match: Callable[[Any], bool], timeout: float) -> Any:
        """Send ``text`` while opening and wait for the JSON reply ``match`` accepts;
        other frames meanwhile go to ``on_text`` as usual."""
        import aiohttp

        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError(f"{self.name}: socket is not connected")
        await ws.send_str(text)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout:.1f}s")
            msg = await asyncio.wait_for(ws.receive(), remaining)
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                if data is not None and match(data):
                    return data
                result = self._on_text(msg.data, time.time_ns())
                if result is not None:
                    await result
            elif msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is not aiohttp.WSMsgType.PONG:
                raise ConnectionError(f"{self.name}: socket closed while opening ({msg.type.name})")

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def run(self) -> None:
        import aiohttp

        while not self._closing:
            reason = "closed"
            try:
                self.ws = await self._session().ws_connect(
                    self._url(),
                    autoping=False,
                    heartbeat=None,
                    max_msg_size=1 << 24,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
                self.connects += 1
                opened = time.monotonic()
                await self._on_open(self)
                self.ready.set()
                reason = await self._read(opened)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure means: down, retry later
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self.ready.clear()
                if self.ws is not None and not self.ws.closed:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.ws.close(), 1.0)
            if self._closing:
                break
            self.drops += 1
            self.last_reason = reason
            try:
                self._on_down(reason)
            except Exception:
                logger.exception("{}: on_down handler failed", self.name)
            if reason.startswith("scheduled"):
                self.scheduled_reconnects += 1
                continue
            delay = self.backoff.next_delay()
            logger.warning("{}: down ({}); reconnecting in {:.2f}s", self.name, reason, delay)
            await asyncio.sleep(delay)

    async def _read(self, opened: float) -> str:
        import aiohttp

        ws = self.ws
        assert ws is not None
        got_data = False
        while True:
            age_left = self.max_age_s - (time.monotonic() - opened)
            if age_left <= 0:
                return "scheduled reconnect before the connection lifetime ends"
            timeout = min(self.silence_timeout_s, age_left)
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout)
            except TimeoutError:
                if time.monotonic() - opened >= self.max_age_s:
                    return "scheduled reconnect before the connection lifetime ends"
                return f"silent for {self.silence_timeout_s:.1f}s"
            if msg.type is aiohttp.WSMsgType.TEXT:
                if not got_data:
                    got_data = True
                    self.backoff.reset()
                result = self._on_text(msg.data, time.time_ns())
                if result is not None:
                    await result
            elif msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                continue
            elif msg.type is aiohttp.WSMsgType.BINARY:
                result = self._on_text(msg.data.decode(), time.time_ns())
                if result is not None:
                    await result
            else:
                return f"socket closed ({msg.type.name})"
