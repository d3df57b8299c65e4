"""Tests for run reports: trace loading, market-making analytics, HTML/PNG output and CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib import image as mpimg

from quoteforge.plugins.report.render import (
    SUMMARY_COLUMNS,
    NotARunFolderError,
    RunFormatError,
    analytics,
    load_run,
    market_slug,
    report_main,
    write_report,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


# ---------------------------------------------------------------------------------------
# Run-folder builders
# ---------------------------------------------------------------------------------------


def tick(
    s: float,
    mid: float | None,
    *,
    market: str = "sim:BTC/USDT",
    our_bid: float | None = None,
    our_ask: float | None = None,
    pnl: float = 0.0,
    state: str = "LIVE",
    inventory: float = 0.0,
) -> dict[str, Any]:
    half = 0.01
    return {
        "type": "tick",
        "t": T0 + round(s * NS),
        "market": market,
        "mid": mid,
        "bid": None if mid is None else mid - half,
        "ask": None if mid is None else mid + half,
        "our_bid": our_bid,
        "our_ask": our_ask,
        "inventory": inventory,
        "pnl": pnl,
        "realized": pnl,
        "unrealized": 0.0,
        "fees": 0.0,
        "spread": None if mid is None else 2 * half,
        "state": state,
    }


def fill(
    s: float,
    side: str,
    price: float,
    *,
    qty: float = 1.0,
    fee: float = 0.0,
    market: str = "sim:BTC/USDT",
) -> dict[str, Any]:
    return {
        "type": "fill",
        "t": T0 + round(s * NS),
        "market": market,
        "side": side,
        "price": price,
        "qty": qty,
        "fee": fee,
        "liquidity": "maker" if fee <= 0 else "taker",
        "client_id": f"c{s}",
        "strategy": "mm",
    }


def write_trace(run_dir: Path, records: Iterable[dict[str, Any]], tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifest.yaml").write_text("run:\n  mode: sim\n")
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (run_dir / "trace.jsonl").write_text(lines + tail)
    return run_dir


def write_summary(run_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    with (run_dir / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


MARKETS = (
    ("sim:BTC/USDT", 30_000.0, "normal"),
    ("sim:ETH/USDT", 2_000.0, "normal"),
    ("sim:SOL/USDT", 150.0, "never_live"),
)


def synth_run(run_dir: Path, *, seconds: int = 240, seed: int = 11) -> Path:
    """A seeded market-making run: random-walk mids, skewed quotes, random maker/taker fills,
    a stale-book window with a reconnect, and one market whose book never goes LIVE."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for market, start_mid, mode in MARKETS:
        step = start_mid * 1e-4
        mid = start_mid
        inv = avg = realized = fees = notional = 0.0
        peak = max_dd = 0.0
        fills = 0
        if mode == "never_live":
            records.append(
                {"type": "event", "t": T0, "market": market, "event": "book_state",
                 "detail": "SYNCING: waiting for snapshot"}
            )  # fmt: skip
        for s in range(seconds + 1):
            t = T0 + s * NS
            mid += rng.gauss(0.0, 2.0) * step
            live = mode == "normal" and not 100 <= s < 110
            if mode == "normal" and s in (100, 110):
                state = "STALE" if s == 100 else "LIVE"
                records.append(
                    {"type": "event", "t": t, "market": market, "event": "book_state",
                     "detail": f"book {state}"}
                )  # fmt: skip
            if mode == "normal" and s == 105:
                records.append(
                    {"type": "event", "t": t, "market": market, "event": "reconnect",
                     "detail": "stream reconnected after 5 s"}
                )  # fmt: skip
            skew = -inv * step
            our_bid = mid - 3 * step + skew if live else None
            our_ask = mid + 3 * step + skew if live else None
            unrealized = inv * (mid - avg)
            pnl = realized + unrealized - fees
            peak = max(peak, pnl)
            max_dd = max(max_dd, peak - pnl)
            has_book = mode == "normal"
            records.append(
                {
                    "type": "tick",
                    "t": t,
                    "market": market,
                    "mid": mid if has_book else None,
                    "bid": mid - step if has_book else None,
                    "ask": mid + step if has_book else None,
                    "our_bid": our_bid,
                    "our_ask": our_ask,
                    "inventory": inv,
                    "pnl": pnl,
                    "realized": realized,
                    "unrealized": unrealized,
                    "fees": fees,
                    "spread": 2 * step if has_book else None,
                    "state": ("LIVE" if live else "STALE") if has_book else "SYNCING",
                }
            )
            if not live or s == seconds or rng.random() > 0.3:
                continue
            side = rng.choice((1, -1))
            qty = rng.choice((0.1, 0.2, 0.5))
            maker = rng.random() < 0.85
            price = (our_bid if side > 0 else our_ask) if maker else mid + side * step
            assert price is not None
            fee = (-0.0001 if maker else 0.0004) * price * qty
            # Average-cost accounting: closing trades realise against the average price.
            if inv == 0 or (inv > 0) == (side > 0):
                avg = (avg * abs(inv) + price * qty) / (abs(inv) + qty)
            else:
                closed = min(qty, abs(inv))
                realized += closed * (price - avg) * (1 if inv > 0 else -1)
                if qty > closed:
                    avg = price
            inv = round(inv + side * qty, 10)
            if inv == 0:
                avg = 0.0
            fees += fee
            notional += price * qty
            fills += 1
            records.append(
                {
                    "type": "fill",
                    "t": t + rng.randrange(1, NS),
                    "market": market,
                    "side": "buy" if side > 0 else "sell",
                    "price": price,
                    "qty": qty,
                    "fee": fee,
                    "liquidity": "maker" if maker else "taker",
                    "client_id": f"{market_slug(market)}-{fills}",
                    "strategy": "mm",
                }
            )
        summary.append(
            {
                "market": market,
                "mid": f"{mid:.4f}" if mode == "normal" else "",
                "spread": f"{2 * step:.4f}" if mode == "normal" else "",
                "inventory": f"{inv:.4f}",
                "pnl": f"{pnl:.6f}",
                "fill_count": fills,
                "notional": f"{notional:.4f}",
                "max_drawdown": f"{max_dd:.6f}",
            }
        )
    records.append(
        {"type": "event", "t": T0 + 200 * NS, "market": None, "event": "breaker",
         "detail": "global notional breaker tripped"}
    )  # fmt: skip
    records.sort(key=lambda r: r["t"])
    write_trace(run_dir, records)
    write_summary(run_dir, summary)
    return run_dir


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def test_load_run_splits_records_by_market(tmp_path: Path) -> None:
    run = load_run(synth_run(tmp_path / "run"))
    assert run.markets == [m for m, _, _ in MARKETS]
    assert all(len(run.ticks[m]) == 241 for m, _, _ in MARKETS)
    assert "sim:SOL/USDT" not in run.fills
    assert {e.event for e in run.events} == {"book_state", "reconnect", "breaker"}
    assert [e.market for e in run.events if e.event == "breaker"] == [None]
    sol = run.ticks["sim:SOL/USDT"]
    assert np.isnan(sol.mid).all()
    assert set(sol.state) == {"SYNCING"}
    assert run.summary["sim:BTC/USDT"].fill_count == len(run.fills["sim:BTC/USDT"])
    assert math.isnan(run.summary["sim:SOL/USDT"].mid)


def test_partial_last_line_of_a_growing_trace_is_ignored(tmp_path: Path) -> None:
    run_dir = write_trace(
        tmp_path / "run", [tick(0, 100.0), tick(1, 100.5)], tail='{"type":"tick","t":17000'
    )
    run = load_run(run_dir)
    assert run.partial_last_line
    assert run.ticks["sim:BTC/USDT"].mid.tolist() == [100.0, 100.5]
    assert not run.has_summary
    assert run.summary == {}


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0)], tail=json.dumps(tick(1, 101.0)))
    run = load_run(run_dir)
    assert not run.partial_last_line
    assert run.ticks["sim:BTC/USDT"].mid.tolist() == [100.0, 101.0]


def test_malformed_line_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0)])
    with (run_dir / "trace.jsonl").open("a") as fh:
        fh.write('{"type": "tick", "t": 1\n')
        fh.write(json.dumps(tick(2, 100.0)) + "\n")
    with pytest.raises(RunFormatError, match=r"trace\.jsonl, line 2: not valid JSON") as info:
        load_run(run_dir)
    assert info.value.line == 2


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**tick(0, 100.0), "mid": "100"}, r"line 1: 'mid' must be a number or null, got '100'"),
        ({k: v for k, v in tick(0, 100.0).items() if k != "pnl"}, r"tick record lacks 'pnl'"),
        ({**tick(0, 100.0), "t": 1.5}, r"'t' must be integer nanoseconds"),
        ({**fill(0, "long", 100.0)}, r"'side' must be 'buy' or 'sell', got 'long'"),
        ({**fill(0, "buy", 100.0), "qty": 0}, r"'price' and 'qty' must be > 0"),
        ({**fill(0, "buy", 100.0), "market": ""}, r"'market' must be text like 'sim:BTC/USDT'"),
        ({"t": 1, "market": "sim:X"}, r"missing or non-text 'type'"),
        ([1, 2], r"expected a JSON object, got list"),
    ],
)
def test_bad_records_are_refused_with_the_reason(tmp_path: Path, record: Any, message: str) -> None:
    run_dir = write_trace(tmp_path / "run", [record])
    with pytest.raises(RunFormatError, match=message.replace("lacks '", "lacks field '")):
        load_run(run_dir)


def test_unknown_record_types_are_counted_not_fatal(tmp_path: Path) -> None:
    run = load_run(write_trace(tmp_path / "run", [tick(0, 1.0), {"type": "order", "t": 0}]))
    assert run.unknown_records == {"order": 1}


def test_bad_summary_value_names_column_and_line(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0)])
    row = dict.fromkeys(SUMMARY_COLUMNS, "1")
    write_summary(run_dir, [{**row, "market": "sim:A"}, {**row, "market": "sim:B", "pnl": "x"}])
    with pytest.raises(RunFormatError, match=r"summary\.csv, line 3: column 'pnl' must be a"):
        load_run(run_dir)


def test_summary_without_required_columns_is_refused(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0)])
    (run_dir / "summary.csv").write_text("market,mid\nsim:A,1\n")
    with pytest.raises(RunFormatError, match=r"line 1: header lacks column\(s\) spread"):
        load_run(run_dir)


def test_folder_without_run_files_is_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(NotARunFolderError, match=r"is not a run folder: it has none of"):
        load_run(tmp_path)
    with pytest.raises(NotARunFolderError, match=r"is not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "manifest.yaml").write_text("run: {}\n")
    with pytest.raises(NotARunFolderError, match=r"has manifest\.yaml but no trace\.jsonl"):
        load_run(tmp_path)


# ---------------------------------------------------------------------------------------
# Analytics on hand-built traces
# ---------------------------------------------------------------------------------------


def hand_built(tmp_path: Path) -> Path:
    """Ticks every second 0..10 s; the mid steps from 100 to 101 at 3 s.

    LIVE except 4-5 s (quotes pulled); at 8 s only our bid is out.
    Fills: buy 99.9 at 0.5 s (rebate 0.01), sell 100.1 at 1 s (fee 0.02), buy 100.5 at
    9.5 s (too late for any markout horizon).
    """
    pnl = [0.0, 1.0, 3.0, 2.0, 0.5, 4.0, 3.0, 3.5, 3.5, 3.5, 3.0]
    ticks = []
    for s in range(11):
        mid = 100.0 if s <= 2 else 101.0
        stale = s in (4, 5)
        ticks.append(
            tick(
                s,
                mid,
                our_bid=None if stale else mid - 0.1,
                our_ask=None if stale or s == 8 else mid + 0.1,
                pnl=pnl[s],
                state="STALE" if stale else "LIVE",
            )
        )
    fills = [
        fill(0.5, "buy", 99.9, fee=-0.01),
        fill(1.0, "sell", 100.1, fee=0.02),
        fill(9.5, "buy", 100.5),
    ]
    return write_trace(tmp_path / "run", sorted(ticks + fills, key=lambda r: r["t"]))


def test_markouts_use_the_first_sample_at_or_after_the_horizon(tmp_path: Path) -> None:
    a = analytics(load_run(hand_built(tmp_path)))["sim:BTC/USDT"]
    one, five, sixty = a.markout(1.0), a.markout(5.0), a.markout(60.0)
    # Buy 99.9 @0.5 s: mid(2 s)=100 -> +0.1; sell 100.1 @1 s: mid(2 s)=100 -> +0.1.
    assert one.count == 2
    assert one.mean == pytest.approx(0.1)
    # Buy: mid(6 s)=101 -> +1.1; sell: mid(6 s)=101 -> -0.9.
    assert five.count == 2
    assert five.mean == pytest.approx(0.1)
    assert five.mean_bps == pytest.approx((1.1 / 99.9 - 0.9 / 100.1) / 2 * 1e4)
    assert sixty.count == 0
    assert sixty.mean is None
    assert sixty.mean_bps is None
    with pytest.raises(KeyError, match=r"no markout at 2 s; computed horizons: 1, 5, 60"):
        a.markout(2.0)


def test_adverse_share_spread_capture_and_fees(tmp_path: Path) -> None:
    a = analytics(load_run(hand_built(tmp_path)))["sim:BTC/USDT"]
    assert a.adverse_selection_share == pytest.approx(0.5)  # only the sell lost at 5 s
    # Mid at the fill is the last sample at or before it: 100, 100, 101.
    assert a.spread_capture == pytest.approx((0.1 + 0.1 + 0.5) / 3)
    assert a.spread_capture_bps == pytest.approx((0.1 / 100 + 0.1 / 100 + 0.5 / 101) / 3 * 1e4)
    assert a.spread_capture_total == pytest.approx(0.7)
    assert a.fees_paid == pytest.approx(0.02)
    assert a.rebates_earned == pytest.approx(0.01)
    assert a.net_fees == pytest.approx(0.01)
    assert (a.fill_count, a.buy_count, a.sell_count, a.maker_count) == (3, 2, 1, 2)
    assert a.volume == pytest.approx(3.0)
    assert a.notional == pytest.approx(99.9 + 100.1 + 100.5)


def test_uptime_fill_ratio_and_drawdown(tmp_path: Path) -> None:
    a = analytics(load_run(hand_built(tmp_path)))["sim:BTC/USDT"]
    assert a.live_ticks == 9
    assert a.quote_uptime == pytest.approx(8 / 9)  # 8 s had only a bid
    # Intervals opening at 0-3 s and 6-9 s carry a quote: 8 s.
    assert a.quoted_seconds == pytest.approx(8.0)
    assert a.fills_per_quoted_minute == pytest.approx(3 / (8 / 60))
    assert a.max_drawdown == pytest.approx(2.5)  # 3.0 at 2 s down to 0.5 at 4 s
    assert a.final_pnl == pytest.approx(3.0)


def test_drawdown_counts_from_the_starting_pnl_of_zero(tmp_path: Path) -> None:
    run_dir = write_trace(
        tmp_path / "run", [tick(0, 1.0, pnl=-1.0), tick(1, 1.0, pnl=-2.0), tick(2, 1.0, pnl=0)]
    )
    assert analytics(load_run(run_dir))["sim:BTC/USDT"].max_drawdown == pytest.approx(2.0)


def test_market_never_live_and_without_fills(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(s, None, state="SYNCING") for s in range(5)])
    a = analytics(load_run(run_dir))["sim:BTC/USDT"]
    assert a.quote_uptime is None
    assert a.live_ticks == 0
    assert a.fill_count == 0
    assert a.adverse_selection_share is None
    assert a.spread_capture is None
    assert a.fills_per_quoted_minute is None
    assert all(m.count == 0 for m in a.markouts)
    assert (a.fees_paid, a.rebates_earned) == (0.0, 0.0)


def test_fill_before_the_first_sample_has_no_spread_capture(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [fill(0, "sell", 10.5), tick(1, 10.0), tick(2, 9.0)])
    a = analytics(load_run(run_dir))["sim:BTC/USDT"]
    assert a.spread_capture is None
    assert a.markout(1.0).mean == pytest.approx(10.5 - 10.0)


def test_non_positive_horizon_is_refused(tmp_path: Path) -> None:
    run = load_run(write_trace(tmp_path / "run", [tick(0, 1.0)]))
    with pytest.raises(ValueError, match=r"horizons must be > 0 seconds, got 0"):
        analytics(run, horizons_s=(0.0,))


@settings(max_examples=40, deadline=None)
@given(
    mids=st.lists(st.floats(50, 150), min_size=1, max_size=30),
    fills_=st.lists(
        st.tuples(st.integers(0, 40 * NS), st.sampled_from(["buy", "sell"]), st.floats(50, 150)),
        max_size=15,
    ),
    horizon=st.sampled_from([0.5, 1.0, 3.0, 7.0]),
)
def test_markout_matches_a_linear_scan(
    tmp_path_factory: pytest.TempPathFactory,
    mids: list[float],
    fills_: list[tuple[int, str, float]],
    horizon: float,
) -> None:
    records = [tick(s, m) for s, m in enumerate(mids)]
    records += [fill(t / NS, side, px) for t, side, px in fills_]
    run_dir = write_trace(tmp_path_factory.mktemp("run"), records)
    got = analytics(load_run(run_dir), horizons_s=(horizon,))["sim:BTC/USDT"].markout(horizon)
    expected = []
    for t, side, px in fills_:
        t_fill = T0 + round(t / NS * NS)
        later = [r for r in records[: len(mids)] if r["t"] >= t_fill + round(horizon * NS)]
        if later:
            expected.append((1 if side == "buy" else -1) * (later[0]["mid"] - px))
    assert got.count == len(expected)
    if expected:
        assert got.mean == pytest.approx(sum(expected) / len(expected))
    else:
        assert got.mean is None


# ---------------------------------------------------------------------------------------
# Report files
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    run_dir = synth_run(tmp_path_factory.mktemp("report") / "run-0001")
    return run_dir, write_report(run_dir)


def image_pixels(path: Path) -> np.ndarray:
    return np.asarray(mpimg.imread(path))[..., :3]


def assert_not_blank(path: Path, min_bytes: int) -> None:
    assert path.stat().st_size > min_bytes
    pixels = image_pixels(path)
    assert pixels.std() > 0.05
    # A blank page is almost all one colour; a chart has lines, text and markers.
    non_white = (pixels < 0.9).any(axis=-1).mean()
    assert non_white > 0.01


def test_write_report_writes_html_and_one_png_per_market(
    report_run: tuple[Path, list[Path]],
) -> None:
    run_dir, written = report_run
    assert written[0] == run_dir / "report.html"
    assert written[1:] == [
        run_dir / "charts" / f"{slug}.png"
        for slug in ("sim-btc-usdt", "sim-eth-usdt", "sim-sol-usdt")
    ]
    for png in written[1:]:
        assert_not_blank(png, 40_000)
    assert not [p for p in run_dir.rglob(".*") if p.is_file()]  # no temporary files left


def test_html_has_a_section_per_market_and_the_summary(
    report_run: tuple[Path, list[Path]],
) -> None:
    run_dir, _ = report_run
    page = (run_dir / "report.html").read_text()
    sections = re.findall(
        r'<section class="market" id="market-([a-z0-9-]+)" data-market="([^"]+)"', page
    )
    assert sections == [
        ("sim-btc-usdt", "sim:BTC/USDT"),
        ("sim-eth-usdt", "sim:ETH/USDT"),
        ("sim-sol-usdt", "sim:SOL/USDT"),
    ]
    with (run_dir / "summary.csv").open() as fh:
        for row in csv.DictReader(fh):
            for column in ("pnl", "max_drawdown", "notional"):
                # Amounts in quote currency to the cent, thousands separated.
                assert f"<td>{float(row[column]):,.2f}</td>" in page, (row["market"], column)
            assert f"<td>{int(row['fill_count']):,}</td>" in page
    # Self-contained and private: no external scripts, no absolute local paths.
    assert "<script src" not in page
    assert str(run_dir.parent) not in page
    assert page.count("Plotly.newPlot(") == 3
    assert "book never LIVE" in page  # SOL
    assert "stream reconnected after 5 s" in page
    assert "global notional breaker tripped" in page


def test_report_numbers_agree_with_the_summary(report_run: tuple[Path, list[Path]]) -> None:
    run = load_run(report_run[0])
    for market, a in analytics(run).items():
        row = run.summary[market]
        assert a.fill_count == row.fill_count
        assert a.notional == pytest.approx(row.notional, rel=1e-6)
        assert a.final_pnl == pytest.approx(row.pnl, abs=1e-5)
        assert a.max_drawdown == pytest.approx(row.max_drawdown, abs=1e-5)
    btc = analytics(run)["sim:BTC/USDT"]
    assert 0.9 < (btc.quote_uptime or 0) <= 1.0
    assert btc.fill_count > 20
    assert btc.rebates_earned > 0
    assert btc.fees_paid > 0


def test_report_only_png_or_only_html(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0), tick(1, 100.1)])
    assert write_report(run_dir, html=False) == [run_dir / "charts" / "sim-btc-usdt.png"]
    assert not (run_dir / "report.html").exists()
    assert write_report(run_dir, png=False) == [run_dir / "report.html"]
    assert write_report(run_dir, png=False, html=False) == []


def test_market_slugs_are_file_name_safe() -> None:
    assert market_slug("sim:BTC/USDT") == "sim-btc-usdt"
    assert market_slug("kraken:XBT/USD.perp") == "kraken-xbt-usd.perp"
    assert market_slug("../../etc") == "etc"
    assert market_slug(":::") == "market"


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def test_report_main_prints_where_files_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0), tick(1, 100.1)])
    assert report_main([str(run_dir), "--no-png"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(run_dir / "report.html")]


def test_report_main_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quoteforge report: error: ")
    assert "is not a run folder" in err


def test_report_main_reports_a_malformed_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0)], tail="oops\n")
    assert report_main([str(run_dir)]) == 1
    assert "trace.jsonl, line 2: not valid JSON" in capsys.readouterr().err


def test_report_main_names_the_extra_when_plotly_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = write_trace(tmp_path / "run", [tick(0, 100.0)])
    for name in ("plotly", "plotly.offline", "plotly.graph_objects", "plotly.subplots"):
        monkeypatch.setitem(sys.modules, name, None)
    assert report_main([str(run_dir), "--no-png"]) == 1
    assert 'pip install "quoteforge[report]"' in capsys.readouterr().err
    assert not (run_dir / "report.html").exists()


def test_report_main_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Rendering in a real browser
# ---------------------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found:
        return found
    message = "chromium is not installed; install it with: apt-get install -y chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_report_renders_in_headless_chromium(
    report_run: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    browser = chromium()
    run_dir, _ = report_run
    url = (run_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    common = [browser, *CHROMIUM_FLAGS]
    screenshot = subprocess.Popen(
        [*common, f"--user-data-dir={tmp_path / 'p1'}", f"--screenshot={shot}",
         "--window-size=1400,3000", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'p2'}", "--virtual-time-budget=5000",
         "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout  # fmt: skip
    assert screenshot.wait(timeout=60) == 0
    assert_not_blank(shot, 50_000)

    run = load_run(run_dir)
    stats = analytics(run)
    chunks = dom.split('<section class="market"')[1:]
    assert len(chunks) == 3
    for chunk, market in zip(chunks, run.markets, strict=True):
        slug = market_slug(market)
        assert f'id="chart-{slug}"' in chunk
        assert 'class="plot-container' in chunk
        assert chunk.count('class="main-svg"') >= 1
        a = stats[market]
        assert f"<td>{a.fill_count} ({a.buy_count} / {a.sell_count}," in chunk
        assert a.final_pnl is not None
        assert f"<td>{a.final_pnl:,.2f}</td>" in chunk
    # Fill markers were drawn for the markets that traded (plotly draws one path per point).
    btc = chunks[0]
    assert btc.count('class="point"') >= stats["sim:BTC/USDT"].fill_count
    summary = dom.split('<section id="summary">')[1].split("</section>")[0]
    for row in run.summary.values():
        assert f"<td>{row.pnl:,.2f}</td>" in summary


# ---------------------------------------------------------------------------------------
# What a real run shows: summary columns, trace on the grid, units, signs, totals
# ---------------------------------------------------------------------------------------

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


@pytest.fixture(scope="module")
def quickstart_run(
    registry: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    """The quickstart (two USDT markets with a maker rebate, one USD binary), 90 s."""
    import asyncio

    from quoteforge.engine import run_manifest
    from quoteforge.manifest import load_manifest

    loaded = load_manifest(QUICKSTART, registry, overrides=["run.duration=90s"])
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    run = asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
    return run_dir, run.summary_rows()


def trace_records(run_dir: Path) -> list[dict[str, Any]]:
    with (run_dir / "trace.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


def test_summary_spreads_are_means_over_the_run_not_the_book_at_shutdown(
    quickstart_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    run_dir, printed = quickstart_run
    with (run_dir / "summary.csv").open() as fh:
        rows = {r["market"]: r for r in csv.DictReader(fh)}
    ticks = [r for r in trace_records(run_dir) if r["type"] == "tick"]
    assert set(rows) == {"sim:BTC/USDT", "sim:ETH/USDT", "sim:RAIN-NYC/USD"}
    for market, row in rows.items():
        mine = [t for t in ticks if t["market"] == market]
        spreads = [t["spread"] for t in mine if t["spread"] is not None]
        quoted = [
            t["our_ask"] - t["our_bid"]
            for t in mine
            if t["our_ask"] is not None and t["our_bid"] is not None
        ]
        assert len(spreads) > 80 and len(quoted) > 5
        # The samples are evenly spaced, so their mean is the time-weighted mean.
        # Written one digit finer than the 0.01 grid.
        assert float(row["spread"]) == pytest.approx(np.mean(spreads), abs=0.00051)
        assert float(row["quoted_spread"]) == pytest.approx(np.mean(quoted), abs=0.00051)
        # Not the book left at shutdown, after our quotes were pulled (the last sample).
        assert float(row["spread"]) != pytest.approx(mine[-1]["spread"], abs=0.0005)
        # The fees' effect on PnL: the quickstart's makers earn rebates, so it is > 0.
        fills = [f for f in trace_records(run_dir) if f["type"] == "fill"]
        fees = -sum(f["fee"] for f in fills if f["market"] == market)
        assert float(row["fees"]) == pytest.approx(fees, abs=1e-6) and fees > 0
        assert float(row["fees"]) == pytest.approx(-mine[-1]["fees"], abs=1e-6)
    # The table printed at the end shows the same numbers as the CSV.
    for row in printed:
        assert float(rows[row["market"]]["spread"]) == pytest.approx(row["spread"])


def decimals_written(value: float) -> int:
    text = repr(value)
    assert "e" not in text, text
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0


def test_trace_prices_and_quantities_are_written_at_the_instruments_grid(
    quickstart_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    run_dir, _ = quickstart_run
    lot_decimals = {"sim:BTC/USDT": 4, "sim:ETH/USDT": 3, "sim:RAIN-NYC/USD": 0}
    seen = 0
    for r in trace_records(run_dir):
        if r["type"] == "tick":
            for name in ("bid", "ask", "our_bid", "our_ask", "spread"):
                if r[name] is not None:
                    assert decimals_written(r[name]) <= 2, (name, r)  # tick size 0.01
                    seen += 1
            if r["mid"] is not None:
                assert decimals_written(r["mid"]) <= 3, r  # a mid may fall on a half tick
        elif r["type"] == "fill":
            assert decimals_written(r["price"]) <= 2, r
            assert decimals_written(r["qty"]) <= lot_decimals[r["market"]], r
            seen += 1
    assert seen > 1000


def test_numbers_are_written_without_exponents_or_float_noise() -> None:
    from quoteforge.plugins.report.charts import fmt, fmt_fixed, fmt_money, grid_decimals

    assert fmt(1357210.45) == "1,357,210"
    assert fmt(474.5069661) == "474.507"
    assert fmt(0.0008215) == "0.0008215"
    assert fmt(-0.0) == "0" and fmt(None) == "n/a" and fmt(math.nan) == "n/a"
    assert fmt(12345) == "12,345"
    assert fmt_money(1357210.456) == "1,357,210.46"
    assert fmt_money(-0.000123456) == "-0.0001235"
    assert fmt_fixed(2000.1000000000001, 2) == "2,000.10"
    assert fmt_fixed(-0.0001, 2) == "0.00"
    assert grid_decimals(np.array([2000.1000000000001, 1998.62, np.nan])) == 2
    assert grid_decimals(np.array([3.0, 40.0])) == 0
    assert grid_decimals(np.array([math.pi])) is None


def test_report_tables_total_each_quote_currency_with_units(
    quickstart_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    run_dir, _ = quickstart_run
    write_report(run_dir, png=False)
    page = (run_dir / "report.html").read_text()
    summary = page[page.index('<table class="summary">') : page.index("</table>")]
    with (run_dir / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert "<th>fees (− paid, + rebate)</th>" in summary
    assert "<th>quoted spread</th>" in summary
    usdt = [r for r in rows if r["market"].endswith("/USDT")]
    pnl = sum(float(r["pnl"]) for r in usdt)
    fills = sum(int(r["fill_count"]) for r in usdt)
    assert (
        f"<tr><td>total USDT (2 markets)</td><td></td><td></td><td></td><td></td>"
        f"<td>{pnl:,.2f}</td>"
    ) in summary
    assert f"<td>{fills:,}</td>" in summary
    assert "<td>total USD (1 market)</td>" in summary
    assert not re.search(r"\d\.\d{7,}|\de[+-]\d", summary)  # no float noise, no exponents
    assert "<td>Final inventory (BTC)</td>" in page
    assert "<td>Rebates earned (USDT)</td>" in page


def test_chart_axes_carry_units_and_fees_read_as_income(
    quickstart_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    from quoteforge.plugins.report.page import _figure

    run_dir, _ = quickstart_run
    run = load_run(run_dir)
    fig = _figure(run, "sim:ETH/USDT")
    titles = [fig.layout[f"yaxis{i if i > 1 else ''}"].title.text for i in range(1, 6)]
    assert titles == [
        "price (USDT)",
        "inventory (ETH)",
        "PnL (USDT)",
        "spread (USDT)",
        "drawdown (USDT)",
    ]
    # The legend sits below the charts, clear of plotly's toolbar at the top right.
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"
    fees = next(t for t in fig.data if t.name == "fees (− paid, + rebate)")
    assert fees.y[-1] == pytest.approx(-run.ticks["sim:ETH/USDT"].fees[-1]) and fees.y[-1] > 0
    price = next(t for t in fig.data if t.name == "mid")
    assert price.hovertemplate == "%{y:,.2f}"


def test_an_older_summary_without_the_new_columns_still_reads(tmp_path: Path) -> None:
    run_dir = write_trace(tmp_path / "old", [tick(0, 100.0)])
    (run_dir / "summary.csv").write_text(
        "market,mid,spread,inventory,pnl,fill_count,notional,max_drawdown\n"
        "sim:BTC/USDT,100,0.5,0,1.5,2,200,0.1\n"
    )
    row = load_run(run_dir).summary["sim:BTC/USDT"]
    assert row.pnl == 1.5 and math.isnan(row.fees) and math.isnan(row.quoted_spread)
    write_report(run_dir, png=False)
    assert "<td>n/a</td>" in (run_dir / "report.html").read_text()
