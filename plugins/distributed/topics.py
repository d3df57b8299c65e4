"""Bus topic scheme and delivery policy shared by every node.

Topics look like ``quoteforge/<run>/<kind>/...``; each kind has a fixed shape and a
QoS/retain policy. The wire encoding (``codec``: envelopes, batch frames, gap
detection) and the signature of a signed bus (``signing``) live in modules of their
own and are re-exported here, so ``quoteforge.plugins.distributed.topics`` stays the
one import for everything a transport puts on the wire. See ``docs/distributed.md``
for the reference tables and ``docs/security.md`` for the signature.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from quoteforge.plugins.distributed.codec import (
    BATCH_VERSION,
    DECIMAL_TAG,
    ENVELOPE_VERSION,
    Codec,
    DecodeError,
    EncodeError,
    Envelope,
    GapDetector,
    decode,
    decode_frame,
    encode,
    encode_batch,
)
from quoteforge.plugins.distributed.signing import (
    MIN_KEY_BYTES,
    REFUSAL_REASONS,
    SIGNED_MAGIC,
    FrameSigner,
    FrameVerifier,
    SignatureError,
    strip_signature,
)

__all__ = [
    "BATCH_VERSION",
    "CONTROL_NAMES",
    "DECIMAL_TAG",
    "ENVELOPE_VERSION",
    "MIN_KEY_BYTES",
    "REFUSAL_REASONS",
    "ROOT",
    "SIGNED_MAGIC",
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
    "retained_by_policy",
    "strip_signature",
    "validate_filter",
    "validate_topic",
]


ROOT = "quoteforge"


class TopicError(ValueError):
    """A topic, topic filter or topic segment is malformed."""


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


def retained_by_policy(topic: str) -> bool:
    """Whether a message may reach a subscriber as a retained value on ``topic``: on the
    project's topics only where the kind's policy retains (heartbeats and state).

    Nothing quoteforge sends on its other topics (intents, orders, fills, controls,
    books, trades, and the ``quoteforge-clock/`` and ``quoteforge-reconcile/`` trees) is
    retained, so a retained copy there was put back by someone else: a kill planted
    retained would stop every later run of that name the moment it subscribes. Topics
    outside the project's trees keep the retain flag their publisher chose.
    """
    head = topic.split("/", 1)[0]
    if head == ROOT:
        try:
            return parse_topic(topic).delivery.retain
        except TopicError:
            return False
    return not head.startswith(ROOT + "-")


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
