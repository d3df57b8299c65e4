"""The versioned wire encoding shared by every node: the envelope, batch frames and
per-stream sequence gaps.

A message travels as a compact JSON envelope (version, message id, source, sequence,
send time, payload), alone or with others of its topic in one batch frame; Decimals
travel exactly. The encoding lives apart from the topic scheme because a transport
needs it on every message while the scheme is consulted once per topic. See
``docs/distributed.md`` for the reference tables.
"""

from __future__ import annotations

import enum
import importlib.util
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from decimal import Decimal
from typing import Any, Literal, NamedTuple

__all__ = [
    "BATCH_VERSION",
    "DECIMAL_TAG",
    "ENVELOPE_VERSION",
    "Codec",
    "DecodeError",
    "EncodeError",
    "Envelope",
    "GapDetector",
    "decode",
    "decode_frame",
    "encode",
    "encode_batch",
]

ENVELOPE_VERSION = 1
BATCH_VERSION = 2


class EncodeError(ValueError):
    """A payload cannot be put on the wire."""


class DecodeError(ValueError):
    """Bytes received from the bus are not a message this version understands."""


def _unsupported(version: object) -> DecodeError:
    # One wording for both decoders: a version mismatch means mixed releases on a run.
    return DecodeError(
        f"unsupported envelope version {version!r}: this quoteforge reads version "
        f"{ENVELOPE_VERSION} (and {BATCH_VERSION} for batch frames); run the same "
        "quoteforge version on every node"
    )


# ---------------------------------------------------------------------------------------
# Envelope encoding
# ---------------------------------------------------------------------------------------

# A Decimal travels as a one-key object holding its exact string, e.g. {"$dec":"0.10"}:
# a plain string would come back as str, and a float would lose digits.
DECIMAL_TAG = "$dec"
#: The key that marks a kept copy of a payload delivered as a retained value (a handler
#: that judges it later keeps ``{**payload, RETAINED_KEY: True}``; see
#: ``freshness.was_retained``); no payload sent may carry it.
RETAINED_KEY = "$retained"
#: True while a receiving bus hands its handlers a message that arrived retained (a
#: value the broker held, not one published now); handlers run synchronously, so a
#: handler reads it as it is called (``freshness.was_retained``).
RETAINED_DELIVERY: ContextVar[bool] = ContextVar("quoteforge_retained_delivery", default=False)
_TAG_OPEN = b'{"' + DECIMAL_TAG.encode() + b'":'
_BATCH_OPEN = b'{"v":' + str(BATCH_VERSION).encode() + b',"b":['
_BATCH_CLOSE = b"]}"


class Envelope(NamedTuple):
    """One decoded message. ``source`` names the publishing bus instance and ``seq``
    counts that source's messages per topic (1, 2, ...), for gap detection."""

    version: int
    msg_id: str | None
    seq: int
    sent_ns: int
    payload: dict[str, Any]
    source: str = ""


def _find_non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_non_finite(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _find_non_finite(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _revive(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and DECIMAL_TAG in value:
            text = value[DECIMAL_TAG]
            if isinstance(text, str):
                return Decimal(text)
        return {k: _revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revive(v) for v in value]
    return value


class Codec:
    """Envelope encoder/decoder over orjson (fast, when installed) or the stdlib json;
    both write and read the same format."""

    def __init__(self, backend: Literal["orjson", "json"] | None = None) -> None:
        if backend is None:
            backend = "orjson" if importlib.util.find_spec("orjson") is not None else "json"
        self.backend = backend
        # Decimals converted by the current encode() call; encode never re-enters itself.
        self._decimals = 0
        self._dumps: Callable[[Any, Callable[[Any], Any]], bytes]
        self._loads: Callable[[bytes | bytearray], Any]
        if backend == "orjson":
            import orjson

            self._dumps = orjson.dumps  # (obj, default): no wrapper on the hot path
            self._loads = orjson.loads
            self._errors: tuple[type[Exception], ...] = (orjson.JSONEncodeError, TypeError)
        elif backend == "json":
            import json

            def dumps_std(obj: Any, default: Callable[[Any], Any]) -> bytes:
                return json.dumps(
                    obj,
                    default=default,
                    separators=(",", ":"),
                    ensure_ascii=False,
                    allow_nan=False,
                ).encode()

            self._dumps = dumps_std
            self._loads = json.loads
            self._errors = (TypeError, ValueError)
        else:
            raise ValueError(f"unknown codec backend {backend!r}: expected 'orjson' or 'json'")

    def _default(self, value: Any) -> Any:
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise EncodeError(
                    f"Decimal {value} is not finite: prices and quantities must be numbers"
                )
            self._decimals += 1
            return {DECIMAL_TAG: str(value)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, uuid.UUID):
            return str(value)
        raise EncodeError(
            f"cannot encode {type(value).__name__} value {value!r}: use str, int, "
            "float, bool, None, Decimal, list or dict"
        )

    def encode(
        self,
        payload: dict[str, Any],
        *,
        msg_id: str | None,
        seq: int,
        source: str = "",
        sent_ns: int | None = None,
    ) -> bytes:
        """The wire bytes of ``payload``. Decimals must be finite; floats must be finite;
        dict keys must be strings and may not start an object with the reserved key
        ``"$dec"``."""
        if not isinstance(payload, dict):
            raise EncodeError(f"payload must be a dict, got {type(payload).__name__}")
        if RETAINED_KEY in payload:
            raise EncodeError(f'payload carries the reserved key "{RETAINED_KEY}"')
        self._decimals = 0
        envelope = {
            "v": ENVELOPE_VERSION,
            "id": msg_id,
            "src": source,
            "seq": seq,
            "ts": time.time_ns() if sent_ns is None else sent_ns,
            "p": payload,
        }
        try:
            data = self._dumps(envelope, self._default)
        except EncodeError:
            raise
        except self._errors as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, EncodeError):
                raise cause from None
            raise EncodeError(f"payload cannot be encoded: {exc}") from None
        # orjson writes NaN/Infinity as null; a null in the output means there may have
        # been one, so only then pay for the walk that finds it.
        if self.backend == "orjson" and data.count(b"null") > (msg_id is None):
            bad = _find_non_finite(payload, "payload")
            if bad:
                raise EncodeError(f"{bad} is not a finite float (NaN/Infinity)")
        if data.count(_TAG_OPEN) != self._decimals:
            raise EncodeError(
                f'payload has a dict whose first key is the reserved "{DECIMAL_TAG}": '
                "rename that key"
            )
        return data

    def encode_batch(self, messages: Sequence[bytes]) -> bytes:
        """One wire frame carrying several envelopes, in order: ``{"v":2,"b":[...]}``.

        ``messages`` are the bytes ``encode`` returned; they are joined as they are,
        without being decoded again."""
        if not messages:
            raise EncodeError("a batch frame needs at least one message")
        return _BATCH_OPEN + b",".join(messages) + _BATCH_CLOSE

    def decode(self, data: bytes) -> Envelope:
        """The envelope in ``data``, or DecodeError naming what is wrong."""
        obj = self._parse(data)
        version = obj.get("v")
        if type(version) is int and version == BATCH_VERSION:
            raise DecodeError("message is a batch frame of several envelopes: use decode_frame")
        if type(version) is not int or version != ENVELOPE_VERSION:
            raise _unsupported(version)
        return self._envelope(obj, _TAG_OPEN in data)

    def decode_frame(self, data: bytes | bytearray) -> list[Envelope | DecodeError]:
        """The envelopes of one wire frame, in order: one for a single message, several
        for a batch frame.

        Raises DecodeError when the frame as a whole is unreadable. A malformed envelope
        inside a batch does not spoil the others: it comes back as a DecodeError in its
        place, and the caller skips it."""
        obj = self._parse(data)
        version = obj.get("v")
        revive = _TAG_OPEN in data
        if type(version) is int:
            if version == ENVELOPE_VERSION:
                return [self._envelope(obj, revive)]
            if version == BATCH_VERSION:
                items = obj.get("b")
                if not isinstance(items, list) or not items:
                    raise DecodeError(
                        "batch frame has no envelopes: expected a non-empty list in 'b'"
                    )
                out: list[Envelope | DecodeError] = []
                append = out.append
                for i, item in enumerate(items):
                    # The common case inline; _envelope says what is wrong otherwise.
                    if type(item) is dict and item.get("v") == ENVELOPE_VERSION:
                        msg_id = item.get("id", False)
                        source = item.get("src")
                        seq = item.get("seq")
                        sent_ns = item.get("ts")
                        payload = item.get("p")
                        if (
                            type(source) is str
                            and type(seq) is int
                            and type(sent_ns) is int
                            and type(payload) is dict
                            and (msg_id is None or type(msg_id) is str)
                        ):
                            if revive:
                                payload = _revive(payload)
                            append(
                                Envelope(ENVELOPE_VERSION, msg_id, seq, sent_ns, payload, source)
                            )
                            continue
                    try:
                        if not isinstance(item, dict) or item.get("v") != ENVELOPE_VERSION:
                            raise DecodeError(
                                f"is not a version {ENVELOPE_VERSION} envelope object"
                            )
                        append(self._envelope(item, revive))
                    except DecodeError as exc:
                        append(DecodeError(f"batch frame item {i} of {len(items)}: {exc}"))
                return out
        raise _unsupported(version)

    def _parse(self, data: bytes | bytearray) -> dict[str, Any]:
        try:
            obj = self._loads(data)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"message is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise DecodeError("message is not an envelope: expected a JSON object")
        return obj

    @staticmethod
    def _envelope(obj: dict[str, Any], revive: bool) -> Envelope:
        try:
            msg_id = obj["id"]
            source = obj["src"]
            seq = obj["seq"]
            sent_ns = obj["ts"]
            payload = obj["p"]
        except KeyError as exc:
            raise DecodeError(f"envelope lacks field {exc.args[0]!r}") from None
        if not (
            (msg_id is None or isinstance(msg_id, str))
            and isinstance(source, str)
            and type(seq) is int
            and type(sent_ns) is int
            and isinstance(payload, dict)
        ):
            raise DecodeError(
                "envelope fields have wrong types: expected id str|null, src str, seq int, "
                "ts int, p object"
            )
        if revive:
            payload = _revive(payload)
        return Envelope(ENVELOPE_VERSION, msg_id, seq, sent_ns, payload, source)


_DEFAULT_CODEC = Codec()


def encode(
    payload: dict[str, Any],
    *,
    msg_id: str | None,
    seq: int,
    source: str = "",
    sent_ns: int | None = None,
) -> bytes:
    """Encode ``payload`` in an envelope with the fastest installed JSON backend."""
    return _DEFAULT_CODEC.encode(payload, msg_id=msg_id, seq=seq, source=source, sent_ns=sent_ns)


def decode(data: bytes) -> Envelope:
    """Decode an envelope written by ``encode`` (by any backend)."""
    return _DEFAULT_CODEC.decode(data)


def encode_batch(messages: Sequence[bytes]) -> bytes:
    """One batch frame of envelopes written by ``encode``, in order."""
    return _DEFAULT_CODEC.encode_batch(messages)


def decode_frame(data: bytes | bytearray) -> list[Envelope | DecodeError]:
    """The envelopes of a single-message or batch frame, in order (see
    ``Codec.decode_frame``)."""
    return _DEFAULT_CODEC.decode_frame(data)


# ---------------------------------------------------------------------------------------
# Gap detection
# ---------------------------------------------------------------------------------------


class GapDetector:
    """Tracks the last sequence number per (source, topic) and reports lost messages.

    ``observe`` returns how many messages were missed before this one (0 when in order,
    and for the first message seen from a source), or ``DUPLICATE`` (-1) when the number
    was already seen. Memory is bounded: the least recently active streams are
    forgotten first.
    """

    DUPLICATE = -1

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("GapDetector capacity must be at least 1")
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._capacity = capacity
        self.gaps = 0
        self.missed = 0
        self.duplicates = 0

    def observe(self, source: str, topic: str, seq: int) -> int:
        key = (source, topic)
        last = self._last.get(key)
        if last is None:
            self._last[key] = seq
            if len(self._last) > self._capacity:
                self._last.popitem(last=False)
            return 0
        if seq <= last:
            self.duplicates += 1
            return self.DUPLICATE
        self._last[key] = seq
        self._last.move_to_end(key)
        missing = seq - last - 1
        if missing:
            self.gaps += 1
            self.missed += missing
        return missing

    def forget(self, source: str) -> None:
        """Drop every stream of ``source`` (a publisher that went away)."""
        for key in [k for k in self._last if k[0] == source]:
            del self._last[key]
