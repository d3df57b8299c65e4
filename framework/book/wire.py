"""Exact conversion of wire decimal strings ("0.00240000") to integer ticks and lots."""

from __future__ import annotations

import struct
from decimal import Decimal

__all__ = [
    "MAX_INTEGER_DIGITS",
    "BookMessageError",
    "WireDecimalParser",
    "step_decimals",
    "strip_checksum_digits",
]

_CACHE_LIMIT = 65_536
_INT64 = 1 << 63
SCALE_DECIMALS = 18
"""Most decimals a text may have for the compiled book path (``scale_table``), and
the bound when a parser is given no ``max_decimals``."""
MAX_INTEGER_DIGITS = 18
"""Most digits a wire decimal may have before its point (both book paths)."""


class BookMessageError(ValueError):
    """A market-data message that cannot be applied; the book was left unchanged."""


def _shown(value: object) -> str:
    """``repr`` of a wire value, cut short: an error message must not carry megabytes."""
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def step_decimals(step: Decimal) -> int:
    """Decimals of a tick or lot size: 2 for 0.01, 0 for 5."""
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


class WireDecimalParser:
    """Turns decimal text into an integer count of ``step`` exactly, with a cache.

    Only the plain spelling venues send is read: ASCII digits, 1 to
    ``MAX_INTEGER_DIGITS`` of them before an optional point, 1 to ``max_decimals``
    after it; no sign, space, underscore or exponent. Anything else, and text off
    the ``step`` grid, raises ``BookMessageError`` naming the market, the value and
    the rule. ``max_decimals`` is the most decimals the venue writes (at least the
    step's own); it bounds the text's length with the integer digits.

    The fast path splits the text at the point and scales the digits as an integer, so
    no ``Decimal`` is built per level. Repeated texts (prices near the top of a book
    recur constantly) are served from a bounded dict, the cheapest lookup Python offers.
    """

    __slots__ = (
        "_cache",
        "_decimals",
        "_pow10",
        "_unit",
        "divisors",
        "market",
        "max_decimals",
        "step",
        "what",
    )

    def __init__(
        self, step: Decimal, what: str, market: str, max_decimals: int | None = None
    ) -> None:
        if step <= 0:
            raise ValueError(f"{market}: {what} step must be > 0, got {step}")
        self.step = step
        self.what = what
        self.market = market
        self._decimals = step_decimals(step)
        if max_decimals is None:
            max_decimals = max(SCALE_DECIMALS, self._decimals)
        if max_decimals < self._decimals:
            raise ValueError(
                f"{market}: {what} texts need at least the {self._decimals} decimals of "
                f"the step {step}, got max_decimals={max_decimals}"
            )
        self.max_decimals = max_decimals
        unit = step * (Decimal(10) ** self._decimals)
        self._unit = int(unit)
        self._pow10 = [10**i for i in range(max(64, max_decimals + 1))]
        self._cache: dict[str, int] = {}
        # Digits of a text with k decimals, point removed, divided by divisors[k] is
        # the count of steps (when the remainder is 0): inlined by hot loops.
        self.divisors: dict[int, int] = {
            k: self._unit * 10 ** (k - self._decimals)
            for k in range(self._decimals, max_decimals + 1)
        }

    @property
    def cache(self) -> dict[str, int]:
        """Text -> count of steps for texts already seen (read-only use on hot paths)."""
        return self._cache

    def __call__(self, text: str) -> int:
        value = self._cache.get(text)
        if value is None:
            return self.parse(text)
        return value

    def parse(self, text: str) -> int:
        """Exact count of steps in ``text``; remembers the answer for next time."""
        if type(text) is not str:
            raise BookMessageError(
                f"{self.market}: {self.what} must be decimal text, got {type(text).__name__} "
                f"{_shown(text)}"
            )
        head, point, tail = text.partition(".")
        # isdigit() alone would take other scripts' digits and superscripts.
        if not (text.isascii() and head.isdigit() and (tail.isdigit() if point else True)):
            raise BookMessageError(
                f"{self.market}: {self.what} {_shown(text)} is not a plain decimal number: "
                "venues send ASCII digits with at most one point and digits on both sides "
                "of it, no sign, space, underscore or exponent"
            )
        if len(head) > MAX_INTEGER_DIGITS:
            raise BookMessageError(
                f"{self.market}: {self.what} {_shown(text)} has {len(head)} digits before "
                f"the point; a {self.what} has at most {MAX_INTEGER_DIGITS}"
            )
        if len(tail) > self.max_decimals:
            raise BookMessageError(
                f"{self.market}: {self.what} {_shown(text)} has {len(tail)} decimals; the "
                f"venue writes at most {self.max_decimals} (step {self.step})"
            )
        value = int(head + tail)
        shift = len(tail) - self._decimals
        if shift > 0:
            value, rest = divmod(value, self._pow10[shift])
            if rest:
                raise self._off_grid(text)
        elif shift:
            value *= self._pow10[-shift]
        if self._unit != 1:
            value, rest = divmod(value, self._unit)
            if rest:
                raise self._off_grid(text)
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[text] = value
        return value

    def _off_grid(self, text: str) -> BookMessageError:
        return BookMessageError(
            f"{self.market}: {self.what} {text!r} is not a multiple of {self.step}; "
            f"check the instrument's {'tick' if self.what == 'price' else 'lot'} size"
        )

    def scale_table(self) -> bytes:
        """The (multiplier, divisor) pairs the compiled book path scales digits with.

        Entry ``k`` turns the digits of a text with ``k`` decimals (point removed) into a
        count of steps: ``digits * multiplier / divisor``, remainder 0. Pairs that do not
        fit in 64 bits are (0, 0), which sends such texts to the interpreted path.
        """
        pairs: list[int] = []
        for k in range(SCALE_DECIMALS + 1):
            if k > self.max_decimals:
                mul = div = 0  # more decimals than the venue writes: the clear error
            elif k >= self._decimals:
                mul, div = 1, self._unit * 10 ** (k - self._decimals)
            else:
                mul, div = 10 ** (self._decimals - k), self._unit
            if mul >= _INT64 or div >= _INT64:
                mul = div = 0
            pairs += (mul, div)
        return struct.pack(f"={len(pairs)}q", *pairs)


def strip_checksum_digits(text: str) -> str:
    """A price or quantity as Kraken's checksum spells it: point removed, leading
    zeros stripped, trailing zeros kept."""
    return text.replace(".", "").lstrip("0")
