"""Bus topic scheme, delivery policy and the versioned wire encoding shared by every node.

Topics look like ``quoteforge/<run>/<kind>/...``; payloads travel as a compact JSON
envelope (version, message id, source, sequence, send time, payload), alone or several
in one batch frame, and on a run's signed bus behind an HMAC signature line
(``FrameSigner``, ``FrameVerifier``). See ``docs/distributed.md`` for the reference
tables and ``docs/security.md`` for the signature.
"""

from __future__ import annotations

import enum
import hmac
import importlib.util
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NamedTuple

__all__ = [
    "BATCH_VERSION",
    "ENVELOPE_VERSION",
    "MIN_KEY_BYTES",
    "REFUSAL_REASONS",
    "ROOT",
    "Codec",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "Envelope",
    "FrameSigner",
    "FrameVerifier",
    "GapDetector",
    "ParsedTopic",
    "SignatureError",
    "TopicError",
    "TopicKind",
    "TopicScheme",
    "decode",
    "decode_frame",
    "decode_symbol",
    "delivery_for",
    "encode",
    "encode_batch",
    "encode_symbol",
    "parse_topic",
    "strip_signature",
    "validate_filter",
    "validate_topic",
]

ROOT = "quoteforge"
ENVELOPE_VERSION = 1
BATCH_VERSION = 2


class TopicError(ValueError):
    """A topic, topic filter or topic segment is malformed."""


class EncodeError(ValueError):
    """A payload cannot be put on the wire."""


class DecodeError(ValueError):
    """Bytes received from the bus are not a message this version understands."""


# ---------------------------------------------------------------------------------------
# Topic scheme
# ---------------------------------------------------------------------------------------


class TopicKind(enum.Enum):
    """The second level under a run: what a message is about."""

    BOOK = "book"
    TRADE = "trade"
    INTENT = "intent"
    ORDER = "order"
    FILL = "fill"
    CONTROL = "control"
    HEARTBEAT = "heartbeat"
    STATE = "state"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How messages of one kind travel: MQTT QoS level and whether the broker retains
    the last value for late subscribers."""

    qos: int
    retain: bool


# Market data is a stream where the next message supersedes the last: losing one costs
# a resync, never a wrong position, so it takes the cheapest path. Everything that
# changes orders or positions must arrive; last-value topics are retained so a node
# that joins late starts from the current state.
_POLICY: dict[TopicKind, Delivery] = {
    TopicKind.BOOK: Delivery(qos=0, retain=False),
    TopicKind.TRADE: Delivery(qos=0, retain=False),
    TopicKind.INTENT: Delivery(qos=1, retain=False),
    TopicKind.ORDER: Delivery(qos=1, retain=False),
    TopicKind.FILL: Delivery(qos=1, retain=False),
    TopicKind.CONTROL: Delivery(qos=1, retain=False),
    TopicKind.HEARTBEAT: Delivery(qos=1, retain=True),
    TopicKind.STATE: Delivery(qos=1, retain=True),
}

# Levels after the kind, per kind: names used by ParsedTopic.
_SHAPE: dict[TopicKind, tuple[str, ...]] = {
    TopicKind.BOOK: ("venue", "symbol"),
    TopicKind.TRADE: ("venue", "symbol"),
    TopicKind.INTENT: ("name",),
    TopicKind.ORDER: ("venue",),
    TopicKind.FILL: ("venue",),
    TopicKind.CONTROL: ("name",),
    TopicKind.HEARTBEAT: ("name",),
    TopicKind.STATE: ("name",),
}

CONTROL_NAMES = ("kill", "breaker")


def delivery_for(kind: TopicKind) -> Delivery:
    """The QoS/retain policy of ``kind``."""
    return _POLICY[kind]


# Characters that cannot appear inside one topic level, or that the symbol encoding
# uses itself; everything else passes through so topics stay readable.
_SYMBOL_ESCAPES = {"%": "%25", "-": "%2D", "+": "%2B", "#": "%23", "\x00": "%00"}


def encode_symbol(symbol: str) -> str:
    """One topic level for a symbol: ``BTC/USDT`` -> ``BTC-USDT``, reversibly.

    ``/`` becomes ``-``; a literal ``-``, ``%``, ``+``, ``#`` or NUL is percent-escaped
    (``BTC-PERP`` -> ``BTC%2DPERP``) so ``decode_symbol`` always gives the symbol back.
    """
    if not symbol:
        raise TopicError("symbol is empty: pass the exchange symbol, e.g. 'BTC/USDT'")
    if not any(c in symbol for c in "%-+#\x00"):
        return symbol.replace("/", "-")
    out = "".join(_SYMBOL_ESCAPES.get(c, c) for c in symbol)
    return out.replace("/", "-")


def decode_symbol(level: str) -> str:
    """The symbol a topic level names (inverse of ``encode_symbol``)."""
    text = level.replace("-", "/")
    if "%" not in text:
        return text
    parts = text.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        try:
            out.append(chr(int(code, 16)) + part[2:])
        except ValueError:
            raise TopicError(
                f"symbol level {level!r} has a bad escape '%{code}': escapes are %XX hex"
            ) from None
    return "".join(out)


def _check_segment(what: str, value: str) -> str:
    if not value:
        raise TopicError(f"{what} is empty: topic levels need a name")
    bad = [c for c in ("/", "+", "#", "\x00") if c in value]
    if bad:
        raise TopicError(
            f"{what} {value!r} contains {', '.join(repr(c) for c in bad)}, which cannot "
            "appear inside one topic level: use letters, digits, '-', '_' or '.'"
        )
    return value


def validate_topic(topic: str) -> str:
    """Check that ``topic`` is a valid MQTT topic name to publish on; return it."""
    if not topic:
        raise TopicError("topic is empty")
    if "+" in topic or "#" in topic:
        raise TopicError(
            f"topic {topic!r} contains a wildcard: wildcards are for subscriptions only"
        )
    if "\x00" in topic:
        raise TopicError(f"topic {topic!r} contains a NUL character")
    if len(topic.encode()) > 65535:
        raise TopicError("topic is longer than 65535 bytes")
    return topic


def validate_filter(pattern: str) -> str:
    """Check that ``pattern`` is a valid MQTT topic filter to subscribe to; return it."""
    if not pattern:
        raise TopicError("topic filter is empty: use '#' to receive everything")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(
                f"topic filter {pattern!r}: '#' must be a whole level and the last one "
                "(e.g. 'quoteforge/run1/#')"
            )
        if "+" in level and level != "+":
            raise TopicError(
                f"topic filter {pattern!r}: '+' must be a whole level "
                "(e.g. 'quoteforge/run1/book/+/BTC-USDT')"
            )
    if "\x00" in pattern:
        raise TopicError(f"topic filter {pattern!r} contains a NUL character")
    return pattern


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """What a quoteforge topic names. ``name`` is the strategy (intent), control name,
    node (heartbeat) or state name; ``symbol`` is decoded back to ``BTC/USDT`` form."""

    run: str
    kind: TopicKind
    venue: str | None = None
    symbol: str | None = None
    name: str | None = None

    @property
    def delivery(self) -> Delivery:
        return _POLICY[self.kind]


def parse_topic(topic: str) -> ParsedTopic:
    """Split a quoteforge topic into its parts, or raise TopicError saying what is off."""
    levels = topic.split("/")
    if len(levels) < 3 or levels[0] != ROOT:
        raise TopicError(
            f"topic {topic!r} is not a quoteforge topic: expected '{ROOT}/<run>/<kind>/...'"
        )
    try:
        kind = TopicKind(levels[2])
    except ValueError:
        kinds = ", ".join(k.value for k in TopicKind)
        raise TopicError(
            f"topic {topic!r} has unknown kind {levels[2]!r}: expected one of {kinds}"
        ) from None
    shape = _SHAPE[kind]
    rest = levels[3:]
    if len(rest) != len(shape) or not all(rest) or not levels[1]:
        form = "/".join(f"<{s}>" for s in shape)
        raise TopicError(
            f"topic {topic!r}: a {kind.value} topic is '{ROOT}/<run>/{kind.value}/{form}'"
        )
    fields: dict[str, str] = dict(zip(shape, rest, strict=True))
    if "symbol" in fields:
        fields["symbol"] = decode_symbol(fields["symbol"])
    return ParsedTopic(run=levels[1], kind=kind, **fields)


@dataclass(frozen=True)
class TopicScheme:
    """Builds the topics of one run: ``TopicScheme("run1").book("binance", "BTC/USDT")``
    is ``quoteforge/run1/book/binance/BTC-USDT``."""

    run: str

    def __post_init__(self) -> None:
        _check_segment("run id", self.run)
        if self.run.startswith("$"):
            raise TopicError(f"run id {self.run!r} may not start with '$' (broker-reserved)")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.run}"

    def everything(self) -> str:
        """Filter matching every topic of this run."""
        return f"{ROOT}/{self.run}/#"

    def book(self, venue: str, symbol: str) -> str:
        return f"{self.prefix}/book/{_check_segment('venue', venue)}/{encode_symbol(symbol)}"

    def trade(self, venue: str, symbol: str) -> str:
        return f"{self.prefix}/trade/{_check_segment('venue', venue)}/{encode_symbol(symbol)}"

    def intent(self, strategy: str) -> str:
        return f"{self.prefix}/intent/{_check_segment('strategy name', strategy)}"

    def order(self, venue: str) -> str:
        return f"{self.prefix}/order/{_check_segment('venue', venue)}"

    def fill(self, venue: str) -> str:
        return f"{self.prefix}/fill/{_check_segment('venue', venue)}"

    def control(self, name: Literal["kill", "breaker"]) -> str:
        if name not in CONTROL_NAMES:
            raise TopicError(f"unknown control {name!r}: expected one of {CONTROL_NAMES}")
        return f"{self.prefix}/control/{name}"

    def kill(self) -> str:
        return self.control("kill")

    def breaker(self) -> str:
        return self.control("breaker")

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}/heartbeat/{_check_segment('node name', node)}"

    def state(self, name: str) -> str:
        return f"{self.prefix}/state/{_check_segment('state name', name)}"

    def book_snapshot(self, venue: str, symbol: str) -> str:
        """Retained full top-of-book of one market, for nodes that join late:
        ``state/book-<venue>-<symbol>``."""
        return self.state(f"book-{_check_segment('venue', venue)}-{encode_symbol(symbol)}")

    def instruments(self, venue: str) -> str:
        """Retained instrument list of a venue, published by the node hosting it."""
        return self.state(f"instruments-{_check_segment('venue', venue)}")

    def node_session(self, role: str) -> str:
        """Retained connection count of a node, so peers notice its reconnects."""
        return self.state(f"node-{_check_segment('node role', role)}")

    def all_of(self, kind: TopicKind) -> str:
        """Filter matching every topic of ``kind`` in this run (e.g. all books)."""
        levels = "/".join("+" for _ in _SHAPE[kind])
        return f"{self.prefix}/{kind.value}/{levels}"


# ---------------------------------------------------------------------------------------
# Envelope encoding
# ---------------------------------------------------------------------------------------

# A Decimal travels as a one-key object holding its exact string, e.g. {"$dec":"0.10"}:
# a plain string would come back as str, and a float would lose digits.
DECIMAL_TAG = "$dec"
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
            raise DecodeError(
                f"unsupported envelope version {version!r}: this quoteforge reads version "
                f"{ENVELOPE_VERSION} (and {BATCH_VERSION} for batch frames); run the same "
                "quoteforge version on every node"
            )
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
        raise DecodeError(
            f"unsupported envelope version {version!r}: this quoteforge reads version "
            f"{ENVELOPE_VERSION} (and {BATCH_VERSION} for batch frames); run the same "
            "quoteforge version on every node"
        )

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


# ---------------------------------------------------------------------------------------
# Signed frames
# ---------------------------------------------------------------------------------------

SIGNED_MAGIC = b"QFS1"
_SIGNED_OPEN = SIGNED_MAGIC + b" "
_MAC_CONTEXT = b"quoteforge-bus-v1\x00"
#: Reasons a signed-bus receiver refuses a frame, as counted in ``FrameVerifier.refused``.
REFUSAL_REASONS = ("unsigned", "malformed", "unknown_key", "bad_signature", "stale", "replayed")
_TOKEN = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
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
    subscription, are checked for their signature only. ``refused`` counts refusals by
    reason.
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
