"""What the two renderings of a market's chart share: the PNG (matplotlib) and the HTML
figure (plotly) draw the same five panels, the same lines in the same order with the same
names and colours, the same fill markers and the same shaded spans where the book was not
LIVE. Both read that description from here, so the two cannot drift apart; each renderer
only says how its library draws a line, a marker or a span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quoteforge.model import Side
from quoteforge.plugins.report.rundata import EMPTY_F, NS, FloatArray, RunData, TickSeries

__all__ = [
    "COLORS",
    "FEES_LINE",
    "PANEL_HEIGHTS",
    "PANEL_TITLES",
    "X_TITLE",
    "Formats",
    "Line",
    "Marks",
    "Panels",
    "axis_titles",
    "chart_note",
    "fill_marks",
    "fmt",
    "fmt_fixed",
    "fmt_money",
    "formats",
    "grid_decimals",
    "lines",
    "panels",
    "units",
]

# Past this many outage spans a chart is mostly shading; neighbours are merged instead.
_MAX_SHADED_SPANS = 200

PANEL_TITLES = (
    "Mid, market bid/ask, our quotes and fills",
    "Inventory",
    "PnL",
    "Spread",
    "Drawdown",
)
PANEL_HEIGHTS = (0.32, 0.17, 0.19, 0.16, 0.16)
X_TITLE = "seconds since run start"
# The fees line is their effect on PnL: a rebate is income, so it plots above zero.
FEES_LINE = "fees (− paid, + rebate)"
COLORS = {
    "mid": "#1f4e79",
    "market": "#a0a0a0",
    "our_bid": "#2e8b57",
    "our_ask": "#c0392b",
    "buy": "#1e9e4a",
    "sell": "#d63c2f",
    "inventory": "#6a3d9a",
    "pnl": "#1f4e79",
    "realized": "#2e8b57",
    "unrealized": "#e08e0b",
    "fees": "#c0392b",
    "spread": "#7f7f7f",
    "our_spread": "#1f77b4",
    "drawdown": "#c0392b",
    "not_live": "#f4d03f",
}


@dataclass(frozen=True)
class Panels:
    """Series for one market's charts, on a common time axis (seconds since run start)."""

    x: FloatArray
    ticks: TickSeries | None
    drawdown: FloatArray
    buys: tuple[FloatArray, FloatArray]
    sells: tuple[FloatArray, FloatArray]
    not_live: list[tuple[float, float]]


@dataclass(frozen=True)
class Line:
    """One line of a market's chart, drawn against :attr:`Panels.x`.

    ``width`` is the matplotlib line width (the plotly figure draws every line alike).
    ``step`` holds each value until the next sample (quotes and inventory change in
    steps). ``faint`` lines are context (the market's own bid and ask), ``fill`` shades
    the area down to zero. The PNG legend is smaller than plotly's: ``png_label``
    rewords an entry there, and a ``png_unlisted`` line shares the entry before it.
    """

    panel: int
    name: str
    y: FloatArray
    color: str
    width: float
    step: bool = False
    faint: bool = False
    fill: bool = False
    png_label: str | None = None
    png_unlisted: bool = False

    @property
    def png_legend(self) -> str | None:
        return None if self.png_unlisted else (self.png_label or self.name)


@dataclass(frozen=True)
class Marks:
    """Our fills of one side, as markers on the price panel (triangles up for buys)."""

    x: FloatArray
    y: FloatArray
    name: str
    color: str
    up: bool


def panels(run: RunData, market: str) -> Panels:
    t0 = run.t0 or 0
    ticks = run.ticks.get(market)
    if ticks is not None and len(ticks):
        x = (ticks.t - t0) / NS
        drawdown = ticks.drawdown
        not_live = _spans(x, ~ticks.live)
    else:
        ticks = None
        x, drawdown, not_live = EMPTY_F, EMPTY_F, []
    fills = run.fills.get(market, [])

    def pick(side: Side) -> tuple[FloatArray, FloatArray]:
        chosen = [f for f in fills if f.side is side]
        xs = np.array([(f.t - t0) / NS for f in chosen], dtype=np.float64)
        ys = np.array([f.price for f in chosen], dtype=np.float64)
        return xs, ys

    return Panels(x, ticks, drawdown, pick(Side.BUY), pick(Side.SELL), not_live)


def lines(p: Panels) -> list[Line]:
    """The chart's lines in drawing order (none without tick samples)."""
    if p.ticks is None:
        return []
    tk = p.ticks
    return [
        Line(
            0, "market bid", tk.bid, COLORS["market"], 0.8, faint=True, png_label="market bid/ask"
        ),
        Line(0, "market ask", tk.ask, COLORS["market"], 0.8, faint=True, png_unlisted=True),
        Line(0, "mid", tk.mid, COLORS["mid"], 1.2),
        Line(0, "our bid", tk.our_bid, COLORS["our_bid"], 1, step=True),
        Line(0, "our ask", tk.our_ask, COLORS["our_ask"], 1, step=True),
        Line(1, "inventory", tk.inventory, COLORS["inventory"], 1.2, step=True),
        Line(2, "PnL", tk.pnl, COLORS["pnl"], 1.2),
        Line(2, "realized", tk.realized, COLORS["realized"], 1.2),
        Line(2, "unrealized", tk.unrealized, COLORS["unrealized"], 1.2),
        Line(2, FEES_LINE, 0.0 - tk.fees, COLORS["fees"], 1.2),
        Line(3, "market spread", tk.spread, COLORS["spread"], 1),
        Line(3, "our spread", tk.our_ask - tk.our_bid, COLORS["our_spread"], 1),
        Line(4, "drawdown", p.drawdown, COLORS["drawdown"], 1, fill=True),
    ]


def fill_marks(p: Panels) -> list[Marks]:
    """Buy and sell fill markers; a side without fills is left out."""
    marks = (
        Marks(*p.buys, "buy fills", COLORS["buy"], up=True),
        Marks(*p.sells, "sell fills", COLORS["sell"], up=False),
    )
    return [m for m in marks if len(m.x)]


def chart_note(p: Panels) -> str:
    """Why a chart is empty, written across it (empty text when it is not)."""
    if p.ticks is None:
        return "no tick samples for this market in the trace"
    if not p.ticks.live.any():
        return "book never LIVE: no market data, no quotes"
    return ""


def _bad(value: float | int | None) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_fixed(value: float | int | None, decimals: int) -> str:
    """``value`` with thousands separators and exactly ``decimals`` decimals (an
    instrument's grid), ``n/a`` if unknown; never in exponent notation."""
    if value is None or _bad(value):
        return "n/a"
    text = f"{value:,.{max(0, decimals)}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def fmt(value: float | int | None, digits: int = 6) -> str:
    """A figure as the report spells it: ``digits`` significant digits but every digit
    of the integer part (``1,357,210``, never ``1.35721e+06``), thousands separated,
    ``n/a`` if unknown."""
    if value is None or _bad(value):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    text = fmt_fixed(value, min(12, max(0, digits - 1 - magnitude)))
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_money(value: float | int | None) -> str:
    """An amount in quote currency: cents from 1 up, four significant digits below."""
    if value is None or _bad(value):
        return "n/a"
    if value == 0 or abs(value) >= 1:
        return fmt_fixed(value, 2)
    return fmt(value, 4)


def grid_decimals(values: FloatArray) -> int | None:
    """The fewest decimals (0-8) that write every finite value of ``values`` (prices or
    quantities on an instrument's grid); None when there is none or they are off-grid."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    v = v[:: max(1, len(v) // 5000)]
    tolerance = 1e-9 * np.maximum(1.0, np.abs(v))
    for decimals in range(9):
        if np.all(np.abs(np.round(v, decimals) - v) <= tolerance):
            return decimals
    return None


@dataclass(frozen=True)
class Formats:
    """How one market's figures are written: its price and quantity grids' decimals
    (found in the trace) and its currencies (from the symbol, ``BASE/QUOTE``)."""

    price_decimals: int
    qty_decimals: int
    base: str
    quote: str

    def price(self, value: float | None) -> str:
        return fmt_fixed(value, self.price_decimals)

    def qty(self, value: float | None) -> str:
        return fmt_fixed(value, self.qty_decimals)

    @property
    def price_d3(self) -> str:
        """The d3 (plotly) format of a price."""
        return f",.{self.price_decimals}f"

    @property
    def qty_d3(self) -> str:
        return f",.{self.qty_decimals}f"


def units(market: str) -> tuple[str, str]:
    """(base, quote) of ``venue:BASE/QUOTE``; generic words for a symbol without ``/``."""
    symbol = market.split(":", 1)[-1]
    if "/" in symbol:
        base, quote = symbol.split("/", 1)
        return base, quote.split(":", 1)[0]
    return "base units", "quote currency"


def formats(run: RunData, market: str) -> Formats:
    ticks = run.ticks.get(market)
    fills = run.fills.get(market, [])
    prices = [np.array([f.price for f in fills], dtype=np.float64)]
    qtys = [np.array([f.qty for f in fills], dtype=np.float64)]
    if ticks is not None:
        prices += [ticks.bid, ticks.ask, ticks.our_bid, ticks.our_ask]
        qtys.append(ticks.inventory)
    price_d = grid_decimals(np.concatenate(prices))
    qty_d = grid_decimals(np.concatenate(qtys))
    base, quote = units(market)
    return Formats(2 if price_d is None else price_d, 4 if qty_d is None else qty_d, base, quote)


def axis_titles(f: Formats) -> tuple[str, ...]:
    """The y-axis title of each panel, with its unit."""
    return (
        f"price ({f.quote})",
        f"inventory ({f.base})",
        f"PnL ({f.quote})",
        f"spread ({f.quote})",
        f"drawdown ({f.quote})",
    )


def _spans(x: FloatArray, mask: npt.NDArray[np.bool_]) -> list[tuple[float, float]]:
    """Time intervals where ``mask`` holds; each runs to the next sample (or the end)."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    end = len(x) - 1
    spans = [(float(x[a]), float(x[min(int(b), end)])) for a, b in zip(starts, stops, strict=True)]
    if len(spans) > _MAX_SHADED_SPANS:
        # Many short outages: one covering span per group keeps the chart readable.
        groups = np.array_split(np.arange(len(spans)), _MAX_SHADED_SPANS)
        spans = [(spans[g[0]][0], spans[g[-1]][1]) for g in groups]
    return spans
