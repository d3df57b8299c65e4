"""Exact conversion of wire decimal strings ("0.00240000") to integer ticks and lots."""

from __future__ import annotations

import struct
from decimal import Decimal, InvalidOperation

__all__ = ["BookMessageError", "WireDecimalParser", "strip_checksum_digits"]

_CACHE_LIMIT = 65_536
_INT64 = 1 << 63
SCALE_DECIMALS = 18
"""Most decimals a text may have for the compiled book path (``scale_table``)."""


class BookMessageError(ValueError):
    """A market-data message that cannot be applied; the book was left unchanged."""


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


class WireDecimalParser:
    """Turns decimal text into an integer count of ``step`` exactly, with a cache.

    The fast path splits the text at the point and scales the digits as an integer, so
    no ``Decimal`` is built per level; text off the ``step`` grid, negative or not a
    plain decimal raises ``BookMessageError`` naming the market and the value.
    Repeated texts (prices near the top of a book recur constantly) are served from a
    bounded dict, which is the cheapest lookup Python offers.
    """

    __slots__ = (
        "_cache",
        "_decimals",
        "_pow10",
        "_unit",
        "divisors",
        "market",
        "step",
        "what",
    )

    def __init__(self, step: Decimal, what: str, market: str) -> None:
        if step <= 0:
            raise ValueError(f"{market}: {what} step must be > 0, got {step}")
        self.step = step
        self.what = what
        self.market = market
        self._decimals = _decimals(step)
        unit = step * (Decimal(10) ** self._decimals)
        self._unit = int(unit)
        self._pow10 = [10**i for i in range(64)]
        self._cache: dict[str, int] = {}
        # Digits of a text with k decimals, point removed, divided by divisors[k] is
        # the count of steps (when the remainder is 0): inlined by hot loops.
        self.divisors: dict[int, int] = {
            k: self._unit * 10 ** (k - self._decimals) for k in range(self._decimals, 40)
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
                f"{text!r}"
            )
        if not text.isascii():
            # int() and Decimal() would read other scripts' digits; venues send ASCII.
            raise BookMessageError(
                f"{self.market}: {self.what} {text!r} is not a plain ASCII decimal number"
            )
        head, _, tail = text.partition(".")
        digits = head + tail
        # isdigit() keeps int() from accepting signs, spaces and underscores.
        if digits.isdigit():
            value = int(digits)
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
        else:
            value = self._parse_slow(text)
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[text] = value
        return value

    def _parse_slow(self, text: str) -> int:
        # Exponent forms ("1E-8") are valid decimals that the fast path does not read.
        try:
            value = Decimal(text)
        except (InvalidOperation, ValueError):
            raise BookMessageError(
                f"{self.market}: {self.what} {text!r} is not a decimal number"
            ) from None
        if not value.is_finite() or value < 0:
            raise BookMessageError(
                f"{self.market}: {self.what} {text!r} must be a finite number >= 0"
            )
        try:
            count, rest = divmod(value, self.step)
        except InvalidOperation:  # the count of steps needs more than 28 digits
            raise BookMessageError(
                f"{self.market}: {self.what} {text!r} is too large for a {self.what} in "
                f"steps of {self.step}"
            ) from None
        if rest:
            raise self._off_grid(text)
        return int(count)

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
            if k >= self._decimals:
                mul, div = 1, self._unit * 10 ** (k - self._decimals)
            else:
                mul, div = 10 ** (self._decimals - k), self._unit
            if mul >= _INT64 or div >= _INT64:
                mul = div = 0
            pairs += (mul, div)
        return struct.pack(f"={len(pairs)}q", *pairs)

    def to_text(self, count: int) -> str:
        """Plain decimal text of ``count`` steps (for fixtures and recordings)."""
        return format(self.step * count, "f")


def strip_checksum_digits(text: str) -> str:
    """A price or quantity as Kraken's checksum spells it: point removed, leading
    zeros stripped, trailing zeros kept."""
    return text.replace(".", "").lstrip("0")
