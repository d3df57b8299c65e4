"""Signed frames: the HMAC-SHA256 signature line a run's signed bus puts before every
frame, and the receiver's checks (known key, this topic, recent, not replayed).

Kept apart from the envelope encoding: the signature wraps whatever frame bytes the
transport sends (a single envelope or a batch frame) without reading them. See
``docs/security.md`` for the wire form and the threat it answers.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import Any

__all__ = [
    "MIN_KEY_BYTES",
    "REFUSAL_REASONS",
    "SIGNED_MAGIC",
    "TOKEN_PATTERN",
    "FrameSigner",
    "FrameVerifier",
    "SignatureError",
    "sender_name",
    "strip_signature",
]

SIGNED_MAGIC = b"QFS1"
_SIGNED_OPEN = SIGNED_MAGIC + b" "
_MAC_CONTEXT = b"quoteforge-bus-v1\x00"
#: Reasons a signed-bus receiver refuses a frame, as counted in ``FrameVerifier.refused``.
REFUSAL_REASONS = ("unsigned", "malformed", "unknown_key", "bad_signature", "stale", "replayed")
#: A key id or sender name: both travel, space-separated, in every signature header.
TOKEN_PATTERN = r"[A-Za-z0-9._:@-]{1,64}"
_TOKEN = re.compile(TOKEN_PATTERN)
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9._:@-]")
MIN_KEY_BYTES = 16


class SignatureError(ValueError):
    """A received frame is not one a holder of the run's bus key sent on this topic,
    now: ``reason`` is one of ``REFUSAL_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _mac(key: bytes, topic: bytes, head: bytes, body: bytes | bytearray) -> bytes:
    # The topic and every header field are covered, so a frame cannot be moved to
    # another topic, renumbered or re-dated without the key.
    return hmac.digest(key, _MAC_CONTEXT + topic + b"\x00" + head + b"\x00" + body, "sha256")


def _check_key(key: bytes, key_id: str) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"the bus signing key is {len(key)} bytes long; use at least {MIN_KEY_BYTES} "
            "random bytes, e.g. export QUOTEFORGE_BUS_KEY=$(openssl rand -hex 32)"
        )
    if not _TOKEN.fullmatch(key_id):
        raise ValueError(
            f"key id {key_id!r} must be 1-64 letters, digits or '._:@-' (it travels in "
            "every signed frame)"
        )


def sender_name(base: str) -> str:
    """A fresh signer name derived from ``base`` (a client id): characters a signature
    header cannot carry become ``_``, and a random suffix makes it unique per bus
    instance, so a restarted node counts its frames from 1 again without looking like
    a replay of its earlier self."""
    return f"{_NOT_TOKEN.sub('_', base)[:48]}.{secrets.token_hex(4)}"


class FrameSigner:
    """Signs outgoing frames with the run's bus key: HMAC-SHA256 over the topic and the
    exact frame bytes, with the key id, this sender's name, its frame counter and the
    send time in the signed header.

    Wire form: ``QFS1 <key id> <sender> <counter> <time ns> <mac hex>\\n<frame>``. The
    counter starts at 1 and grows by one per signed frame; 0 is reserved for the last
    will, which is signed once at connect time and sent by the broker later.
    """

    __slots__ = ("_key", "_key_id", "_n", "_sender")

    def __init__(self, key: bytes, key_id: str, sender: str) -> None:
        _check_key(key, key_id)
        if not _TOKEN.fullmatch(sender):
            raise ValueError(f"sender name {sender!r} must be 1-64 letters, digits or '._:@-'")
        self._key = key
        self._key_id = key_id.encode()
        self._sender = sender.encode()
        self._n = 0

    def sign(self, topic: str, frame: bytes, *, now_ns: int | None = None) -> bytes:
        """The signed form of ``frame`` for ``topic``, with the next counter value."""
        self._n += 1
        return self._signed(topic, frame, self._n, time.time_ns() if now_ns is None else now_ns)

    def sign_will(self, topic: str, frame: bytes) -> bytes:
        """The signed form of a last will (counter 0), sent by the broker when the
        connection dies."""
        return self._signed(topic, frame, 0, time.time_ns())

    def _signed(self, topic: str, frame: bytes, n: int, ts: int) -> bytes:
        head = b"%s %s %d %d" % (self._key_id, self._sender, n, ts)
        mac = _mac(self._key, topic.encode(), head, frame).hex().encode()
        return b"%s %s %s\n%s" % (SIGNED_MAGIC, head, mac, frame)


def strip_signature(data: bytes | bytearray) -> bytes | bytearray:
    """The frame inside a signed frame, unchecked (for a bus that has no key); other
    data unchanged."""
    if data[:5] == _SIGNED_OPEN:
        end = data.find(b"\n")
        if end > 0:
            return data[end + 1 :]
    return data


class FrameVerifier:
    """Checks received frames: signed with a known key, for this topic, recent, and not
    seen before.

    A frame is refused when it is unsigned, its signature does not match, its key id is
    unknown, its send time is more than ``max_age_s`` away from this machine's clock, or
    its sender's counter was already seen (or fell behind the last ``window`` counters
    of that sender). Retained values, which the broker hands out again on every
    subscription, are checked for their signature only, so the caller must refuse a
    retained frame on a topic whose values are not retained by design (the MQTT bus
    does, see ``topics.retained_by_policy``): a copy re-published retained by someone
    without the key would pass otherwise. ``refused`` counts refusals by reason.
    """

    def __init__(
        self,
        keys: dict[str, bytes],
        *,
        max_age_s: float = 60.0,
        window: int = 4096,
        senders: int = 10_000,
    ) -> None:
        if not keys:
            raise ValueError("a FrameVerifier needs at least one key")
        for key_id, key in keys.items():
            _check_key(key, key_id)
        self._keys = {k.encode(): v for k, v in keys.items()}
        self._max_age_ns = int(max_age_s * 1e9)
        self._window = window
        self._mask = (1 << window) - 1
        self._senders = senders
        # Per sender: the highest counter seen and a bitmap of the counters seen below
        # it (bit i: counter high - i), so a frame that arrives out of order still
        # passes once.
        self._seen: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        self._wills: OrderedDict[bytes, None] = OrderedDict()
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def open(
        self,
        topic: str,
        data: bytes | bytearray,
        *,
        retained: bool = False,
        now_ns: int | None = None,
    ) -> bytes | bytearray:
        """The frame inside ``data`` once its signature checks out; SignatureError (and
        the refusal counted) otherwise."""
        try:
            return self._open(topic, data, retained, now_ns)
        except SignatureError as exc:
            self.refused[exc.reason] += 1
            raise

    def _open(
        self, topic: str, data: bytes | bytearray, retained: bool, now_ns: int | None
    ) -> bytes | bytearray:
        if data[:5] != _SIGNED_OPEN:
            raise SignatureError("unsigned", "the frame is not signed")
        end = data.find(b"\n")
        fields = bytes(data[5:end]).split(b" ") if end > 0 else []
        if len(fields) != 5:
            raise SignatureError("malformed", "the signature header is malformed")
        key_id, sender, n_text, ts_text, mac_hex = fields
        key = self._keys.get(key_id)
        if key is None:
            raise SignatureError(
                "unknown_key",
                f"signed with key id {key_id.decode(errors='replace')!r}, which this node "
                "does not hold",
            )
        try:
            n = int(n_text)
            ts = int(ts_text)
            mac = bytes.fromhex(mac_hex.decode("ascii"))
        except ValueError:
            raise SignatureError("malformed", "the signature header is malformed") from None
        if n < 0:
            raise SignatureError("malformed", "the signature header is malformed")
        body = data[end + 1 :]
        head = data[5:end][: -len(mac_hex) - 1]
        if not hmac.compare_digest(mac, _mac(key, topic.encode(), bytes(head), body)):
            raise SignatureError(
                "bad_signature", "the signature does not match the frame and its topic"
            )
        if retained:
            return body
        sender_key = sender
        if n == 0:
            # A last will: signed when its sender connected, so it is old by nature;
            # each sender has one, applied once.
            if sender_key in self._wills:
                raise SignatureError("replayed", "this sender's last will was seen already")
            self._remember(self._wills, sender_key, None)
            return body
        now = time.time_ns() if now_ns is None else now_ns
        if abs(now - ts) > self._max_age_ns:
            raise SignatureError(
                "stale",
                f"sent {(now - ts) / 1e9:.1f}s from now, outside the {self._max_age_ns / 1e9:g}s "
                "window (a replay, or clocks out of step: run NTP on every node)",
            )
        high, bits = self._seen.get(sender_key, (0, 0))
        if n > high:
            shift = n - high
            bits = ((bits << shift) | (1 << (shift - 1)) if high else 0) & self._mask
            self._remember(self._seen, sender_key, (n, bits))
            return body
        back = high - n
        if n == high or back > self._window or (bits >> (back - 1)) & 1:
            raise SignatureError("replayed", f"frame {n} of this sender was seen already")
        self._remember(self._seen, sender_key, (high, bits | (1 << (back - 1))))
        return body

    def _remember(self, table: OrderedDict[bytes, Any], sender: bytes, value: Any) -> None:
        table[sender] = value
        table.move_to_end(sender)
        if len(table) > self._senders:
            table.popitem(last=False)
