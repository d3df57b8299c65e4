"""The strategy API reference (docs/strategies/reference.md) is generated from the
docstrings of Market, Instrument, StrategyContext and Strategy: every public member is
documented, the file is current, and the guide links it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quoteforge import Instrument, Market, Strategy, StrategyContext
from quoteforge.plugins.strategy_docs import CLASSES, members, reference, undocumented

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "strategies" / "reference.md"
GUIDE = ROOT / "docs" / "strategies" / "authoring.md"


def test_every_public_member_of_the_strategy_api_is_documented() -> None:
    assert {cls for cls, _ in CLASSES} == {Market, Instrument, StrategyContext, Strategy}
    missing = undocumented()
    assert not missing, (
        "document these (a docstring on a method or property, a '#:' comment above an "
        f"attribute), then run {sys.executable} -m quoteforge.plugins.strategy_docs > "
        f"docs/strategies/reference.md: {', '.join(missing)}"
    )


def test_the_check_catches_an_undocumented_method_property_and_attribute() -> None:
    class Sample:
        """A documented class."""

        #: Documented.
        limit: int = 3
        bare: int = 4

        def __init__(self, size: float) -> None:
            #: Documented too.
            self.size = size
            self.other = 1
            self._private = 2

        def method(self) -> None:
            pass

        @property
        def prop(self) -> int:
            return 1

        def good(self) -> None:
            """Has a docstring."""

    found = {m.name: m for m in members(Sample)}
    assert found["size"].signature == ": float"  # the type of the argument it is set from
    assert "_private" not in found
    assert undocumented(((Sample, "s"),)) == [
        "Sample.bare",
        "Sample.other",
        "Sample.method",
        "Sample.prop",
    ]


def test_the_members_the_guide_relies_on_are_in_the_reference() -> None:
    text = reference()
    for needle in (
        "### `market.bid(price_ticks: int, qty_lots: int, level: int = 0, post_only: bool = "
        "True) -> Quote | None`",
        "### `market.ticks(price: float | Decimal, side: Side | None = None) -> int`",
        "### `market.position_lots: int` (property)",
        "| `market.instrument.tick_size` | `Decimal` |",
        "| `self.ctx.now_ns` | `Callable[[], int]` |",
        "### `self.ctx.call_later(seconds: float, fn: Callable[[], None]) -> Any`",
        "### `self.on_book(market: Market, **kwargs: Any) -> Quotes | None`",
    ):
        assert needle in text, needle


def test_the_reference_file_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == reference(), (
        "docs/strategies/reference.md is stale: "
        "python -m quoteforge.plugins.strategy_docs > docs/strategies/reference.md"
    )
    printed = subprocess.run(
        [sys.executable, "-m", "quoteforge.plugins.strategy_docs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == reference()


def test_the_guide_and_the_docs_link_each_other() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    assert "(reference.md)" in guide
    assert "run_strategy" in guide
    assert "strategies/authoring.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "strategies/authoring.md" in (ROOT / "docs" / "strategies.md").read_text(
        encoding="utf-8"
    )
