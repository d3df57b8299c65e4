"""The live dashboard (rendered in headless Chromium, and followed while a run grows) and
the terminal progress bar."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quoteforge.engine import Run
from quoteforge.manifest import load_manifest
from quoteforge.plugins.report.dashboard import (
    DashboardError,
    RunFolderTail,
    create_app,
    dashboard_main,
    display,
)
from quoteforge.progress import Progress
from quoteforge.registry import PluginRegistry

MANIFEST = """\
run: {{name: dash, duration: {duration}, seed: 11}}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          flow: {{arrival_rate: 3.0, reach: 15.0, size: 0.05}}
          outages: [{{at: 20s, duration: 8s}}]
        YES/USD:
          kind: binary
          tick_size: "0.01"
          lot_size: "1"
          initial_price: 0.5
          process: {{model: jump, sigma: 0.004}}
          flow: {{arrival_rate: 2.0, reach: 0.03, size: 30}}
          liquidity: {{levels: 4, distance: 0.03, spacing: 0.01, size: 100}}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {{spread_bps: 4, order_size: 0.05}}
  mm_yes:
    type: pure_market_making
    exchange: sim
    symbols: YES/USD
    params: {{spread_bps: 300, order_size: 30, refresh_tolerance_bps: 50}}
report: {{html: false, png: false}}
alerting: {{stale_after: 3s}}
"""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
)


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    if found:
        return found
    message = "headless Chromium is missing; install it with: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def build_run(registry: PluginRegistry, tmp_path: Path, duration: str) -> Run:
    path = tmp_path / "dash.yaml"
    path.write_text(MANIFEST.format(duration=duration))
    return Run(load_manifest(path, registry), registry, run_dir=tmp_path / "run")


@pytest.fixture(scope="module")
def finished_run(registry: PluginRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dashboard")
    asyncio.run(build_run(registry, tmp, "60s").run())
    return tmp / "run"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def dashboard(finished_run: Path) -> AsyncIterator[str]:
    runner, url = await serve(create_app(finished_run, poll_interval=0.5))
    yield url
    await runner.cleanup()


def trace(run_dir: Path) -> list[dict[str, Any]]:
    with (run_dir / "trace.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


def last_ticks(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["market"]: r for r in trace(run_dir) if r["type"] == "tick"}


def summary(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "summary.csv").open() as fh:
        return {row["market"]: row for row in csv.DictReader(fh)}


async def browse(url: str, tmp_path: Path, *mode: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *mode,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # The dashboard is served from this event loop, so wait without blocking it.
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode("utf-8", errors="replace")


def cell(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert match, f"no element {element_id} in the page"
    return html.unescape(match.group(1))


async def test_dashboard_renders_charts_and_numbers_in_chromium(
    dashboard: str, finished_run: Path, tmp_path: Path
) -> None:
    dom = await browse(dashboard, tmp_path, "--dump-dom")
    ticks = last_ticks(finished_run)
    rows = summary(finished_run)
    assert set(ticks) == set(rows) == {"sim:BTC/USDT", "sim:YES/USD"}
    # One Plotly chart, drawn as SVG, per market.
    assert dom.count('class="js-plotly-plot"') + dom.count('js-plotly-plot"') >= 2
    assert dom.count('class="main-svg"') >= 2
    fills = [r for r in trace(finished_run) if r["type"] == "fill"]
    for market, tick in ticks.items():
        slug = market.replace(":", "-").replace("/", "-")
        assert f'id="chart-{slug}"' in dom
        assert cell(dom, f"pnl-{slug}") == f"{tick['pnl']:,.2f}"
        assert float(rows[market]["pnl"]) == pytest.approx(tick["pnl"], abs=1e-6)
        assert cell(dom, f"inventory-{slug}") == f"{tick['inventory']:,.6g}"
        assert cell(dom, f"fills-{slug}") == f"{int(rows[market]['fill_count']):,}"
        ours = [f for f in fills if f["market"] == market]
        notional = sum(f["price"] * f["qty"] for f in ours)
        assert cell(dom, f"notional-{slug}") == f"{notional:,.2f}"
        assert cell(dom, f"open_orders-{slug}") == "0"  # everything cancelled at the end
        assert cell(dom, f"state-{slug}") == "LIVE"
    assert cell(dom, "resyncs-sim-BTC-USDT") == "1"  # the outage
    assert cell(dom, "resyncs-sim-YES-USD") == "0"
    assert "stale_book: sim:BTC/USDT book not LIVE for 3s" in html.unescape(dom)
    assert "finished" in cell(dom, "run-meta")


async def test_dashboard_screenshot_is_a_full_page_png(dashboard: str, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    await browse(dashboard, tmp_path, "--window-size=1400,1000", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 1000)
    # A blank page compresses to a few kB; charts and tables do not.
    assert len(data) > 60_000


async def test_dashboard_follows_a_run_as_it_grows(tmp_path: Path) -> None:
    # As an operator would: the run in one process, the dashboard in another.
    manifest = tmp_path / "dash.yaml"
    manifest.write_text(MANIFEST.format(duration="1h"))
    run_dir = tmp_path / "run"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quoteforge.cli",
        "run",
        str(manifest),
        "--out",
        str(run_dir),
        "--quiet",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    runner = None
    seen: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not (run_dir / "run.json").exists():
            assert loop.time() < deadline and proc.returncode is None, "the run did not start"
            await asyncio.sleep(0.05)
        runner, url = await serve(create_app(run_dir))
        async with aiohttp.ClientSession() as session:
            while len(seen) < 3 and loop.time() < deadline:
                async with session.get(f"{url}/api/state") as resp:
                    assert resp.status == 200
                    state = await resp.json()
                samples = sum(len(m["series"]["t"]) for m in state["markets"])
                if samples and (not seen or samples > seen[-1]["samples"]):
                    seen.append({"samples": samples, "state": state})
                await asyncio.sleep(0.1)
            assert len(seen) == 3, "the dashboard did not pick up new samples"
            assert all(s["state"]["status"] == "running" for s in seen)
            proc.send_signal(signal.SIGINT)
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
            async with session.get(f"{url}/api/state") as resp:
                final = await resp.json()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if runner is not None:
            await runner.cleanup()
    # Partial lines of a trace still being written were never misread.
    assert all(s["state"]["bad_lines"] == 0 for s in seen) and final["bad_lines"] == 0
    assert final["status"] == "finished" and final["stop_reason"] == "signal SIGINT"
    ticks = last_ticks(run_dir)
    by_market = {m["market"]: m for m in final["markets"]}
    for market, row in summary(run_dir).items():
        view = by_market[market]
        assert view["values"]["fills"] == int(row["fill_count"])
        assert view["values"]["pnl"] == ticks[market]["pnl"]
        assert view["display"]["pnl"] == display("money", ticks[market]["pnl"])
        assert view["values"]["open_orders"] == 0


def test_tail_reads_only_complete_lines_and_restarts_on_a_new_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    path = run_dir / "trace.jsonl"
    tick = {"type": "tick", "t": 1, "market": "v:A/B", "pnl": 1.5, "inventory": 2.0}
    line = json.dumps(tick)
    path.write_text(line + "\n" + line[:20])
    tail = RunFolderTail(run_dir)
    assert tail.poll()
    assert len(tail.markets["v:A/B"].ticks["t"]) == 1
    with path.open("a") as fh:
        fh.write(line[20:] + "\n")
    assert tail.poll()
    assert len(tail.markets["v:A/B"].ticks["t"]) == 2 and tail.bad_lines == 0
    assert not tail.poll()
    path.write_text(json.dumps({**tick, "pnl": -3.0}) + "\n")  # a new, shorter file
    assert tail.poll()
    snap = tail.snapshot()
    assert snap["markets"][0]["values"]["pnl"] == -3.0
    assert snap["markets"][0]["display"]["pnl"] == "-3.00"
    assert len(snap["markets"][0]["series"]["t"]) == 1


def test_snapshot_thins_long_series_but_keeps_the_last_point(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with (run_dir / "trace.jsonl").open("w") as fh:
        for t in range(1000):
            fh.write(json.dumps({"type": "tick", "t": t, "market": "v:A/B", "pnl": t}) + "\n")
    tail = RunFolderTail(run_dir)
    tail.poll()
    series = tail.snapshot(max_points=100)["markets"][0]["series"]
    assert 50 <= len(series["t"]) <= 101
    assert series["t"][0] == 0 and series["t"][-1] == 999 and series["pnl"][-1] == 999
    with pytest.raises(ValueError, match="max_points must be at least 2"):
        tail.snapshot(max_points=1)


def test_journal_alone_shows_fills_and_inventory_in_lots(
    finished_run: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "copy" / "journal.sqlite"
    alone.parent.mkdir()
    shutil.copy(finished_run / "journal.sqlite", alone)
    tail = RunFolderTail(alone)
    tail.poll()
    snap = tail.snapshot()
    assert snap["source"] == "journal" and snap["units"] == "ticks and lots"
    conn = sqlite3.connect(alone)
    try:
        fills = [
            json.loads(p)["fill"]
            for (p,) in conn.execute("SELECT payload FROM journal WHERE kind = 'fill' ORDER BY seq")
        ]
    finally:
        conn.close()
    for market in snap["markets"]:
        ours = [f for f in fills if f"{f['venue']}:{f['symbol']}" == market["market"]]
        lots = sum(f["qty_lots"] * (1 if f["side"] == "buy" else -1) for f in ours)
        assert market["values"]["fills"] == len(ours) > 0
        assert market["values"]["inventory"] == lots
        assert market["values"]["open_orders"] == 0


def test_wrong_paths_are_refused_with_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match="no such file or folder"):
        RunFolderTail(tmp_path / "missing")
    with pytest.raises(DashboardError, match="not a run folder"):
        RunFolderTail(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DashboardError, match="expected a run folder"):
        RunFolderTail(tmp_path / "notes.txt")


def test_dashboard_main_reports_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dashboard_main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert dashboard_main([str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be 1..65535" in capsys.readouterr().err
    assert dashboard_main([str(tmp_path), "--poll", "0"]) == 2
    assert "--poll must be a positive" in capsys.readouterr().err


# -- who may ask ------------------------------------------------------------------------------

SECRETS_OF_THE_RUN = ("sim:BTC/USDT", "pnl", "inventory", "run_id")


async def fetch(url: str, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{path}", headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


async def test_a_forged_host_gets_403_and_nothing_of_the_run(dashboard: str) -> None:
    port = dashboard.rsplit(":", 1)[1]
    # What a DNS-rebinding page sends: its own name, resolved to 127.0.0.1.
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}"):
        for path in ("/", "/api/state", "/plotly.min.js", "/missing"):
            status, body, _ = await fetch(dashboard, path, Host=host)
            assert status == 403, (host, path)
            assert "does not answer to host" in body and "--allow-host" in body
            assert not any(word in body for word in SECRETS_OF_THE_RUN)
    status, body, headers = await fetch(dashboard, "/api/state")
    assert status == 200 and "sim:BTC/USDT" in body
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    for host in (f"localhost:{port}", f"LOCALHOST:{port}", "127.0.0.1"):
        assert (await fetch(dashboard, "/api/state", Host=host))[0] == 200


async def test_cross_origin_reads_are_refused(dashboard: str) -> None:
    port = dashboard.rsplit(":", 1)[1]
    for origin in ("http://attacker.example", "https://127.0.0.1", "null", "http://[::1"):
        status, body, _ = await fetch(dashboard, "/api/state", Origin=origin)
        assert status == 403, origin
        assert "cross-origin" in body and "sim:BTC/USDT" not in body
    status, body, _ = await fetch(dashboard, "/api/state", **{"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "sim:BTC/USDT" not in body
    status, body, _ = await fetch(
        dashboard, "/api/state", **{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    )
    assert status == 403
    # The page's own requests and a typed-in or followed link still work.
    status, body, _ = await fetch(
        dashboard,
        "/api/state",
        Origin=f"http://127.0.0.1:{port}",
        **{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
    )
    assert status == 200 and "sim:BTC/USDT" in body
    status, body, _ = await fetch(
        dashboard, "/", **{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    )
    assert status == 200 and "<script" in body


async def test_allowed_host_names_are_served(finished_run: Path) -> None:
    runner, url = await serve(create_app(finished_run, allowed_hosts=["Dash.Internal", "::1"]))
    try:
        for host in ("dash.internal:8765", "dash.internal", "[::1]:8765"):
            status, body, _ = await fetch(url, "/api/state", Host=host)
            assert status == 200 and "sim:BTC/USDT" in body, host
        assert (await fetch(url, "/api/state", Host="other.internal"))[0] == 403
        status, _, _ = await fetch(url, "/api/state", Origin="http://dash.internal:8765")
        assert status == 200
    finally:
        await runner.cleanup()
    with pytest.raises(ValueError, match="not a host name"):
        create_app(finished_run, allowed_hosts=["bad:port:x"])


async def test_a_rebinding_page_in_chromium_reads_nothing(dashboard: str, tmp_path: Path) -> None:
    # Chromium resolves a foreign name to the dashboard's address, as rebinding does.
    port = dashboard.rsplit(":", 1)[1]
    dom = await browse(
        f"http://rebind.example:{port}/api/state",
        tmp_path,
        "--host-resolver-rules=MAP rebind.example 127.0.0.1",
        "--dump-dom",
    )
    assert "does not answer to host" in dom
    assert "sim:BTC/USDT" not in dom and "pnl" not in dom


def test_dashboard_listens_on_loopback_unless_exposed(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        assert dashboard_main([str(finished_run), "--host", host]) == 2
        err = capsys.readouterr().err
        assert f"--host {host} is not a loopback address" in err and "--expose" in err
    assert dashboard_main([str(finished_run), "--allow-host", "a:b:c"]) == 2
    assert "--allow-host: not a host name" in capsys.readouterr().err


# -- progress --------------------------------------------------------------------------------


def test_progress_is_silent_when_stderr_is_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress(total=10, desc="sim", unit="s", stream=out) as bar:
        for _ in range(10):
            bar.update()
    assert out.getvalue() == ""
    assert bar.n == 10 and not bar.enabled


def test_progress_draws_a_bar_on_a_terminal() -> None:
    leader, follower = os.openpty()
    try:
        with (
            os.fdopen(follower, "w", encoding="utf-8", closefd=False) as tty,
            Progress(total=200, desc="backtest", unit="ev", stream=tty, min_interval=0) as bar,
        ):
            for _ in range(4):
                bar.update(50)
        chunks = []
        while select.select([leader], [], [], 0.2)[0]:
            chunks.append(os.read(leader, 65536))
        output = b"".join(chunks).decode("utf-8")
    finally:
        os.close(leader)
        os.close(follower)
    frames = [f for f in output.split("\r") if f.strip()]
    assert frames[0].startswith("backtest:   0%|") and " 0/200 ev " in frames[0]
    assert frames[-1].rstrip().startswith("backtest: 100%|")
    assert " 200/200 ev " in frames[-1] and "█" in frames[-1]
    assert output.endswith("\n")


def test_progress_without_a_total_counts_and_refuses_bad_totals() -> None:
    bar = Progress(total=None, desc="sweep", unit="runs", stream=io.StringIO())
    bar.update(3)
    assert bar.render(80).startswith("sweep: 3 runs [")
    with pytest.raises(ValueError, match="total must be a finite number >= 0 or None"):
        Progress(total=-1)
    with pytest.raises(ValueError, match="total must be a finite number"):
        Progress(total=float("nan"))


def many_fills_run(run_dir: Path, n_fills: int) -> Path:
    """A trace of one market with ``n_fills`` fills spread over the run and a few ticks."""
    run_dir.mkdir()
    with (run_dir / "trace.jsonl").open("w") as fh:
        for i in range(n_fills):
            side = "buy" if i % 2 else "sell"
            record = {"type": "fill", "t": i * 10**9, "market": "v:A/B", "side": side}
            fh.write(json.dumps({**record, "price": 100.0 + i % 7, "qty": 1.0}) + "\n")
        for s in range(0, n_fills, max(1, n_fills // 20)):
            tick = {"type": "tick", "t": s * 10**9, "market": "v:A/B", "pnl": 0.0, "mid": 100.0}
            fh.write(json.dumps({**tick, "inventory": 0.0, "state": "LIVE"}) + "\n")
    return run_dir


def test_fills_are_thinned_over_the_whole_run_not_cut_to_the_last(tmp_path: Path) -> None:
    tail = RunFolderTail(many_fills_run(tmp_path / "r", 8000))
    tail.poll()
    market = tail.snapshot(max_points=100)["markets"][0]
    fills = market["fills"]
    assert market["values"]["fills"] == 8000  # the count is every fill, shown or not
    assert 50 <= len(fills) <= 101
    # Evenly over the run: the first and the last fill, and the early part is not lost.
    assert fills[0][0] == 0 and fills[-1][0] == 7999 * 10**9
    times = [f[0] for f in fills]
    assert sum(t < 4000 * 10**9 for t in times) >= len(fills) // 2 - 1
    # Few enough fills are all shown.
    assert len(tail.snapshot(max_points=10_000)["markets"][0]["fills"]) == 8000


async def test_dashboard_says_when_fills_are_thinned(tmp_path: Path) -> None:
    thinned = many_fills_run(tmp_path / "many", 4000)
    runner, url = await serve(create_app(thinned, poll_interval=0.5))
    try:
        dom = await browse(url, tmp_path, "--dump-dom")
    finally:
        await runner.cleanup()
    note = re.fullmatch(
        r"fills thinned over the whole run: (\d+) of 4000 shown", cell(dom, "fn-v-A-B")
    )
    assert note and 700 <= int(note.group(1)) <= 1501  # the page asks for 1500 points
    runner, url = await serve(create_app(many_fills_run(tmp_path / "few", 300), poll_interval=0.5))
    try:
        dom = await browse(url, tmp_path, "--dump-dom")
    finally:
        await runner.cleanup()
    assert cell(dom, "fn-v-A-B") == ""


def test_snapshot_totals_venues_and_recent_fills(finished_run: Path) -> None:
    tail = RunFolderTail(finished_run)
    tail.poll()
    snap = tail.snapshot()
    rows = summary(finished_run)
    # One total per quote currency (USDT, USD): PnL, fees and fills add up within each.
    totals = {t["quote"]: t for t in snap["totals"]}
    assert set(totals) == {"USDT", "USD"}
    for quote, market in (("USDT", "sim:BTC/USDT"), ("USD", "sim:YES/USD")):
        assert totals[quote]["markets"] == 1
        assert totals[quote]["values"]["pnl"] == pytest.approx(float(rows[market]["pnl"]))
        assert totals[quote]["values"]["fills"] == int(rows[market]["fill_count"])
        assert totals[quote]["values"]["open_orders"] == 0
    assert snap["venues"] == [
        {
            "venue": "sim",
            "books": {"BTC/USDT": "LIVE", "YES/USD": "LIVE"},
            "resyncs": 1,
            "open_orders": 0,
            "state": "live",
        }
    ]
    fills = [r for r in trace(finished_run) if r["type"] == "fill"]
    recent = snap["recent_fills"]
    assert len(recent) == min(50, len(fills))
    assert [f["client_id"] for f in recent] == [f["client_id"] for f in fills[::-1][:50]]
    assert all(m["orders"] == [] for m in snap["markets"])  # all cancelled at the end


def test_open_orders_follow_the_journal_through_order_states(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    """Mid-run (stopped by a cut journal), the dashboard's open orders are the orders the
    kernel's OrderStates leaves working, at the market's grid once a fill showed it."""
    from quoteforge.journal import JournalRecord, order_states

    run = build_run(registry, tmp_path, "30s")
    asyncio.run(run.run())
    journal = run.run_dir / "journal.sqlite"
    conn = sqlite3.connect(journal)
    try:
        cut = conn.execute("SELECT max(seq) FROM journal").fetchone()[0] // 2
        conn.execute("DELETE FROM journal WHERE seq > ?", (cut,))
        conn.commit()
        rows = conn.execute(
            "SELECT event_id, kind, ts_ns, market, payload FROM journal "
            "WHERE kind IN ('order', 'order_update', 'fill') ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    states = order_states(JournalRecord(e, k, t, m, json.loads(p)) for e, k, t, m, p in rows)
    working = {
        cid
        for cid, o in states.items()
        if o["status"] not in ("filled", "cancelled", "rejected", "expired")
    }
    assert working, "orders were working at the cut"
    tail = RunFolderTail(run.run_dir)
    tail.poll()
    shown = {o["client_id"]: o for m in tail.snapshot()["markets"] for o in m["orders"]}
    assert set(shown) == working
    for cid, row in shown.items():
        state = states[cid]
        assert row["side"] == state["side"] and row["strategy"] == state["strategy"]
        view = tail.markets[row["market"]]
        assert view.tick is not None and view.lot is not None  # learned from a fill
        assert row["price"] == format(view.tick * state["price_ticks"], "f")
        assert row["qty"] == format(view.lot * state["qty_lots"], "f")
