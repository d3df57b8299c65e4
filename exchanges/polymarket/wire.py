"""Polymarket CLOB wire formats: markets and outcome tokens, order signing through the
official client (py-clob-client: EIP-712 orders, HMAC API-key headers), order and trade
reports, and the venue's error texts classified for recovery."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from quoteforge.exchanges.ccxt_orders import VenueCallError
from quoteforge.model import Liquidity, OrderStatus, Side

__all__ = [
    "ORDER_STATUS",
    "QTY_STEP",
    "TOKEN_UNIT",
    "VENUE_TICKS",
    "ApiCredentials",
    "OrderSigner",
    "OutcomeToken",
    "ReportError",
    "classify_error",
    "decimal_of",
    "fee_of",
    "parse_market",
    "plain",
    "shown",
]

TOKEN_UNIT = Decimal("0.000001")
"""Outcome tokens and USDC both have 6 decimals on chain: the unit every size is read at."""
QTY_STEP = Decimal("0.01")
"""Order sizes are whole hundredths of a share (the official client rounds sizes to 2)."""
ONE = Decimal(1)
_SCALE = Decimal(1_000_000)
VENUE_TICKS = frozenset(Decimal(t) for t in ("0.1", "0.01", "0.001", "0.0001"))
"""The tick sizes the venue uses (the official client's list)."""
MAX_FEE_BPS = Decimal(10_000)
"""A fee rate above 100% of the cheaper side is no fee the venue charges."""

ORDER_STATUS = {
    "LIVE": OrderStatus.OPEN,
    "MATCHED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "CANCELED_MARKET_RESOLVED": OrderStatus.CANCELLED,
    "INVALID": OrderStatus.REJECTED,
    "UNMATCHED": OrderStatus.EXPIRED,
    "DELAYED": OrderStatus.PENDING_NEW,
}
"""The venue's order statuses (REST and the user channel, any case) as ours."""


def plain(text: Any) -> str:
    """A wire decimal as plain text: ``.48`` (as the docs' examples write it) becomes
    ``0.48``; everything else is kept digit for digit."""
    value = str(text).strip()
    return "0" + value if value.startswith(".") else value


class ReportError(ValueError):
    """A user-channel event or REST row that cannot be booked; the message names the
    field and the value, and nothing of the event was booked."""


def shown(value: Any) -> str:
    """``repr`` of a wire value, cut short: a log line must not carry megabytes."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decimal_of(value: Any, name: str) -> Decimal:
    """A wire number read exactly: the venue's decimal string (``.48`` as ``0.48``), or
    a JSON number decoded as ``Decimal`` or ``int``. A float (read through binary), a
    bool, text that is no number and a value that is not finite are a ``ReportError``
    naming ``name``."""
    kind = type(value)
    if kind is str:
        text: Any = plain(value)
    elif kind is Decimal or kind is int:
        text = value
    else:
        raise ReportError(f"{name} {shown(value)} is not a decimal string")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ReportError(f"{name} {shown(value)} is not a number") from None
    if not number.is_finite():
        raise ReportError(f"{name} {shown(value)} is not a finite number")
    return number


@dataclass(frozen=True)
class OutcomeToken:
    """One outcome token of a condition, as the market endpoints list it."""

    symbol: str  # ours: "<market>/<OUTCOME>"
    token_id: str
    outcome: str
    condition_id: str
    complement: str  # our symbol of the other outcome
    tick_size: Decimal
    min_size: Decimal
    neg_risk: bool
    maker_fee_bps: int
    taker_fee_bps: int


def parse_market(
    alias: str, data: dict[str, Any]
) -> tuple[list[OutcomeToken], bool, dict[str, bool]]:
    """The two outcome tokens of a binary market (``GET /markets/{condition_id}``), whether
    it is closed, and each token's ``winner`` flag. ``ValueError`` names what is missing."""
    tokens = data.get("tokens")
    cid = str(data.get("condition_id", ""))
    if not isinstance(tokens, list) or len(tokens) != 2:
        raise ValueError(
            f"market {alias!r} ({cid or 'no condition id'}) does not list two outcome tokens; "
            "only binary markets (YES/NO) are supported"
        )
    try:
        tick = Decimal(str(data["minimum_tick_size"]))
        min_size = Decimal(str(data.get("minimum_order_size", "0")))
    except KeyError as exc:
        raise ValueError(f"market {alias!r}: the venue did not send {exc}") from None
    labels = [str(t.get("outcome", "")).strip().upper().replace(" ", "_") for t in tokens]
    if labels[0] == labels[1] or not all(labels):
        labels = ["YES", "NO"]
    symbols = [f"{alias}/{label}" for label in labels]
    out = []
    for i, token in enumerate(tokens):
        out.append(
            OutcomeToken(
                symbol=symbols[i],
                token_id=str(token["token_id"]),
                outcome=labels[i],
                condition_id=cid,
                complement=symbols[1 - i],
                tick_size=tick.normalize(),
                min_size=min_size.normalize(),
                neg_risk=bool(data.get("neg_risk", False)),
                maker_fee_bps=int(Decimal(str(data.get("maker_base_fee", 0)))),
                taker_fee_bps=int(Decimal(str(data.get("taker_base_fee", 0)))),
            )
        )
    winners = {t.symbol: bool(tok.get("winner")) for t, tok in zip(out, tokens, strict=True)}
    return out, bool(data.get("closed", False)), winners


def fee_of(bps: Any, price: Decimal, size: Decimal) -> Decimal:
    """The venue's fee in USDC for ``size`` shares at ``price`` with ``bps``: the rate
    applies to the cheaper side of the contract, ``min(price, 1 - price) * size``. A
    rate that is no number, or outside 0 to 10,000 bps, is a ``ReportError``."""
    if bps is None or bps == "":
        return Decimal(0)
    rate = decimal_of(bps, "fee_rate_bps")
    if not 0 <= rate <= MAX_FEE_BPS:
        raise ReportError(f"fee_rate_bps {shown(bps)} outside 0 to {MAX_FEE_BPS}")
    if not rate:
        return Decimal(0)
    return (rate / Decimal(10_000) * min(price, ONE - price) * size).quantize(TOKEN_UNIT)


@dataclass(frozen=True)
class ApiCredentials:
    """The CLOB API key triple; ``repr`` never shows the secret or the passphrase."""

    api_key: str
    api_secret: str
    passphrase: str

    def __repr__(self) -> str:
        return "ApiCredentials(<redacted>)"


def import_eth_account() -> None:
    """Import eth-account without its import-time side effect on the whole process.

    eth-account imports py_ecc, which raises the interpreter's recursion limit to
    100,000 when it is imported. With that limit a deeply nested JSON message from any
    venue overflows the C stack (the process dies) instead of raising RecursionError,
    which the book sources turn into a resync. Every import of eth-account or
    py-clob-client in quoteforge goes through here first, so the limit stays as it was.
    ``ModuleNotFoundError`` when eth-account is not installed."""
    limit = sys.getrecursionlimit()
    try:
        import eth_account  # noqa: F401
    finally:
        sys.setrecursionlimit(limit)


class OrderSigner:
    """Builds and signs orders and request headers with the official client
    (py-clob-client), and checks that the signed amounts are exactly the Decimal price
    and size we meant (the client works in floats)."""

    def __init__(
        self,
        private_key: str,
        creds: ApiCredentials,
        *,
        chain_id: int = 137,
        signature_type: int = 0,
        funder: str | None = None,
    ) -> None:
        try:
            import_eth_account()
            from py_clob_client.clob_types import ApiCreds
            from py_clob_client.order_builder.builder import OrderBuilder
            from py_clob_client.signer import Signer
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                'the Polymarket adapter needs py-clob-client: pip install "quoteforge[polymarket]"',
                name="py_clob_client",
            ) from exc
        self._signer = Signer(private_key, chain_id)
        self._creds = ApiCreds(creds.api_key, creds.api_secret, creds.passphrase)
        self._builder = OrderBuilder(self._signer, sig_type=signature_type, funder=funder)
        self.chain_id = chain_id
        self.api_key = creds.api_key

    def __repr__(self) -> str:
        return f"OrderSigner(address={self.address}, <keys redacted>)"

    @property
    def address(self) -> str:
        return str(self._signer.address())

    def headers(self, method: str, path: str, body: str | None = None) -> dict[str, str]:
        """The L2 (API key, HMAC-SHA256) headers of one request, signed over ``body``
        exactly as it will be sent."""
        from py_clob_client.clob_types import RequestArgs
        from py_clob_client.headers.headers import create_level_2_headers

        args = RequestArgs(method=method, request_path=path, body=body, serialized_body=body)
        return dict(create_level_2_headers(self._signer, self._creds, args))

    def sign(
        self,
        *,
        token_id: str,
        side: Side,
        price: Decimal,
        size: Decimal,
        tick_size: Decimal,
        neg_risk: bool,
        fee_rate_bps: int = 0,
        expiration: int = 0,
    ) -> tuple[dict[str, Any], str]:
        """A signed order (the ``order`` object of ``POST /order``) and its hash, which
        is the venue's order id. ``ValueError`` when the signed amounts are not exactly
        ``price`` and ``size``."""
        from py_clob_client.clob_types import CreateOrderOptions, OrderArgs
        from py_clob_client.order_builder.constants import BUY, SELL

        tick_text = format(tick_size.normalize(), "f")
        if tick_size.normalize() not in VENUE_TICKS:
            raise ValueError(f"tick size {tick_text} is not one the venue uses")
        signed = self._builder.create_order(
            OrderArgs(
                token_id=token_id,
                price=float(price),
                size=float(size),
                side=BUY if side is Side.BUY else SELL,
                fee_rate_bps=fee_rate_bps,
                expiration=expiration,
            ),
            CreateOrderOptions(tick_size=tick_text, neg_risk=neg_risk),
        )
        body = signed.dict()
        shares = int(size * _SCALE)
        usdc = price * size * _SCALE
        want = (usdc, shares) if side is Side.BUY else (shares, usdc)
        got = (Decimal(body["makerAmount"]), Decimal(body["takerAmount"]))
        if got != want:
            raise ValueError(
                f"signed amounts {got} differ from price {price} x size {size} ({want}); "
                "sizes must be whole hundredths and prices on the tick"
            )
        return body, order_hash(signed.order, self.chain_id, neg_risk)


def order_hash(order: Any, chain_id: int, neg_risk: bool) -> str:
    """The EIP-712 hash of a signed order: the id the venue gives it."""
    import_eth_account()
    from eth_utils import keccak
    from py_clob_client.config import get_contract_config
    from py_order_utils.builders.base_builder import BaseBuilder

    exchange = get_contract_config(chain_id, neg_risk).exchange
    domain = BaseBuilder(exchange, chain_id, None, None).domain_separator
    return "0x" + keccak(order.signable_bytes(domain=domain)).hex().removeprefix("0x")


def classify_error(status: int, body: str) -> VenueCallError:
    """A failed answer as a ``VenueCallError``: what to do next depends on it. Its
    ``payload`` is the decoded answer (None when it was not JSON)."""
    data: Any = None
    try:
        data = json.loads(body)
        text = (
            str(data.get("error") or data.get("error_msg") or data.get("errorMsg") or body)
            if isinstance(data, dict)
            else body
        )
    except ValueError:
        text = body
    text = text[:300] or f"HTTP {status}"
    upper = text.upper()
    if status in (401, 403) or "UNAUTHORIZED" in upper or "INVALID API KEY" in upper:
        return VenueCallError("auth", text, str(status), payload=data)
    if status == 404 or "NOT FOUND" in upper:
        return VenueCallError("not_found", text, str(status), payload=data)
    if status >= 500 or status == 0:
        return VenueCallError("unknown", text, str(status), payload=data)
    if "DUPLICATED" in upper:
        # The venue has this order (a resend of one it took): look it up, never resend.
        return VenueCallError("unknown", text, "duplicate", payload=data)
    return VenueCallError("rejected", text, str(status), payload=data)


def liquidity_of(trader_side: str, ours_is_taker: bool) -> Liquidity:
    """Maker or taker for our side of a trade."""
    if trader_side:
        return Liquidity.TAKER if trader_side.upper() == "TAKER" else Liquidity.MAKER
    return Liquidity.TAKER if ours_is_taker else Liquidity.MAKER
