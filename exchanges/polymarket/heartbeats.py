"""Polymarket's dead man's switch: heartbeats (``POST /v1/heartbeats``). Once they have
started, the venue cancels every open order of the account when none came for 10 s; each
heartbeat carries the id of the last answer, the first ``null``.

The official client (py-clob-client) posts to ``/v1/heartbeats`` and the API reference
names ``/heartbeats``: the first heartbeat tries the client's path and, when the venue
answers 404, the reference's; the path that answered serves the run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.exchanges.ccxt_orders import VenueCallError

__all__ = ["HEARTBEAT_PATH", "HEARTBEAT_PATHS", "HEARTBEAT_TIMEOUT_S", "PolymarketHeartbeats"]

HEARTBEAT_PATH = "/v1/heartbeats"  # the official py-clob-client's path
#: Tried in order by the first heartbeat: the client's path, then the API reference's.
HEARTBEAT_PATHS = (HEARTBEAT_PATH, "/heartbeats")
HEARTBEAT_TIMEOUT_S = 10.0  # the venue's: fixed, not ours to set


class PolymarketHeartbeats:
    """Heartbeats of ``PolymarketClob`` (a mixin; the adapter provides the attributes
    declared here and the base adapter's ``start_auto_cancel`` keeps them going)."""

    name: str
    params: Any
    call: Callable[..., Awaitable[Any]]  # the adapter's REST call
    _heartbeat_id: str | None  # the id the next heartbeat carries
    _heartbeat_path: str | None  # the path that answered (None: not found yet)

    if TYPE_CHECKING:  # ccxt_base.CcxtSpotAdapter's

        async def start_auto_cancel(
            self,
            after_s: float,
            set_countdown: Callable[[float], Awaitable[None]],
            every_s: float | None = None,
        ) -> None: ...

    async def start_heartbeats(self, every_s: float) -> None:
        """The first heartbeat now, then one every ``every_s``; a first one that fails
        stops the start (no run may trade believing the switch is on)."""
        self._heartbeat_id = None
        self._heartbeat_path = None
        try:
            await self.start_auto_cancel(HEARTBEAT_TIMEOUT_S, self._heartbeat, every_s=every_s)
        except VenueCallError as exc:
            raise ValueError(
                f"exchange {self.name!r}: the first heartbeat (POST "
                f"{self._heartbeat_path or ' or '.join(HEARTBEAT_PATHS)}) failed: {exc}. "
                "Without it the venue's dead man's switch is off; set "
                "heartbeat_interval_s: null to run without it"
            ) from None

    async def _heartbeat(self, seconds: float) -> None:
        """One heartbeat, carrying the id of the last answer (``null`` starts a chain).
        The venue refuses any other id, naming the one it expects: a chain of an earlier
        run still live, or ``null`` once ours lapsed (it cancelled our orders after a
        silence); the heartbeat is sent again with that id. ``seconds`` 0 is the run's
        stop: the venue has no call to end the heartbeats, so none is sent and its
        timeout cancels nothing of ours, the run's own cancels having gone first."""
        if not seconds:
            self._heartbeat_id = None
            return
        try:
            answer = await self._post_heartbeat(self._heartbeat_id)
        except VenueCallError as exc:
            payload = exc.payload if isinstance(exc.payload, dict) else {}
            expected = payload.get("heartbeat_id", ...)
            if (
                exc.kind != "rejected"
                or "HEARTBEAT" not in exc.message.upper()
                or not (expected is None or isinstance(expected, str))
                or expected == self._heartbeat_id
            ):
                raise
            logger.warning(
                "{}: the venue expects heartbeat id {}, not {} (an earlier run's chain, or "
                "ours lapsed and the venue cancelled our orders); resynchronising",
                self.name,
                expected,
                self._heartbeat_id,
            )
            self._heartbeat_id = expected
            answer = await self._post_heartbeat(expected)
        beat = answer.get("heartbeat_id") if isinstance(answer, dict) else None
        if not isinstance(beat, str) or not beat:
            raise VenueCallError("unknown", f"heartbeat answer without a heartbeat_id: {answer!r}")
        self._heartbeat_id = beat

    async def _post_heartbeat(self, heartbeat_id: str | None) -> Any:
        """POST one heartbeat; until a path has answered, each of ``HEARTBEAT_PATHS`` in
        turn while the venue answers 404 (no such route)."""
        body = {"heartbeat_id": heartbeat_id}
        if self._heartbeat_path is not None:
            return await self.call("POST", self._heartbeat_path, body=body, auth=True)
        for i, path in enumerate(HEARTBEAT_PATHS):
            try:
                answer = await self.call("POST", path, body=body, auth=True)
            except VenueCallError as exc:
                if exc.kind != "not_found" or i + 1 == len(HEARTBEAT_PATHS):
                    raise
                continue
            # Any other answer, a refusal included, shows the route exists.
            self._heartbeat_path = path
            if i:
                logger.warning(
                    "{}: heartbeats go to POST {} (the venue answered 404 at {})",
                    self.name, path, ", ".join(HEARTBEAT_PATHS[:i]),
                )  # fmt: skip
            return answer
        raise AssertionError("unreachable: the last path raises or answers")
