"""The dashboard as a control surface, clicked in a real headless Chromium (Playwright):
a live Binance adapter trades against the local Binance replica, the run serves its
control API, and the dashboard passes the page's actions on with the token typed in."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quoteforge.engine import Run
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins.control_http import CONTROL_FILE, ENV_TOKEN, ENV_WHO
from quoteforge.plugins.report.dashboard import create_app
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMakingParams

TOKEN = "dashboard-control-token-0123456789"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "binance_testnet.yaml"
SYMBOL = "BTCUSDT"
MARKET = "binance:BTCUSDT"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(message: str) -> None:
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def chromium_path() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    if not found:
        _missing("headless Chromium is missing; install it with: apt-get install -y chromium")
    assert found is not None
    return found


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Any]:
    """A page in headless Chromium driven by Playwright (the system's Chromium: Playwright
    downloads no browser of its own here)."""
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ModuleNotFoundError:
        _missing('Playwright is missing; install it with: pip install -e ".[dev]"')
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert errors == [], f"the page's script failed: {errors}"
        finally:
            await browser.close()


@dataclass
class Live:
    run: Run
    task: asyncio.Task[str]
    replica: BinanceReplica
    dashboard: str
    control: str

    def open_orders(self) -> list[Any]:
        return self.replica.orders(SYMBOL)


def spread_bps(run: Run) -> float:
    """The running params of the pure_market_making strategy "mm"."""
    params = run.strategies["mm"].strategy.params
    assert isinstance(params, PureMarketMakingParams)
    return params.spread_bps


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
def control_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QUOTEFORGE_CONTROL_ADDR", "QUOTEFORGE_CONTROL_EXPOSE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_TOKEN, TOKEN)
    monkeypatch.setenv(ENV_WHO, "desk")


@pytest.fixture
async def live(
    registry: PluginRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    control_env: None,
) -> AsyncIterator[Live]:
    """examples/binance_testnet.yaml against the Binance replica with its control API on,
    quotes resting at the replica, and the dashboard of its run folder."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
    monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
    params = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": "false"}
    overrides = [f"exchanges.binance.params.{k}={v}" for k, v in params.items()]
    overrides += ["run.duration=10m", "run.cancel_timeout=20s", "report.html=false"]
    overrides += ["report.png=false"]
    manifest = tmp_path / "binance.yaml"
    manifest.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    loaded = load_manifest(manifest, registry, overrides=overrides)
    run = Run(loaded, registry, run_dir=tmp_path / "run", manifest_path=manifest)
    task = asyncio.create_task(run.run())
    runner: web.AppRunner | None = None
    try:
        await wait_for(
            lambda: (run.run_dir / CONTROL_FILE).exists() or task.done(), "the control API"
        )
        assert not task.done(), "the run ended before its control API came up"
        await wait_for(lambda: len(replica.orders(SYMBOL)) == 4, "4 quotes at the replica")
        runner = web.AppRunner(create_app(run.run_dir, poll_interval=0.2), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        control = json.loads((run.run_dir / CONTROL_FILE).read_text())["url"]
        yield Live(run, task, replica, url, control)
    finally:
        if runner is not None:
            await runner.cleanup()
        if not task.done():
            run.request_stop("test done")
        await asyncio.wait_for(asyncio.shield(task), 60)
        await replica.stop()


async def enter_token(page: Any, token: str = TOKEN) -> None:
    await page.fill("#token", token)
    await page.click("#token-use")
    await page.wait_for_function(
        "document.getElementById('control-status').textContent.includes('token accepted')"
    )


async def result_text(page: Any, element: str, *words: str) -> str:
    """The text of ``element`` once it holds every one of ``words``."""
    try:
        await page.wait_for_function(
            "([id, words]) => { const e = document.getElementById(id);"
            " return e && words.every(w => e.textContent.includes(w)); }",
            arg=[element, list(words)],
            timeout=10_000,
        )
    except Exception as exc:
        shown = await page.text_content(f"#{element}")
        raise AssertionError(f"#{element} never held {words}; it shows {shown!r}") from exc
    return str(await page.text_content(f"#{element}"))


def control_records(run_dir: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute(
            "SELECT payload FROM journal WHERE kind = 'control' ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return [json.loads(p) for (p,) in rows]


def innermost(orders: list[Any]) -> tuple[Decimal, Decimal]:
    bids = [o.price for o in orders if o.side == "buy"]
    asks = [o.price for o in orders if o.side == "sell"]
    return max(bids), min(asks)


def mid(live: Live) -> Decimal:
    mr = live.run.markets[MARKET]
    bid, ask = mr.book.best_bid(), mr.book.best_ask()
    assert bid is not None and ask is not None
    return (bid[0] + ask[0]) * mr.instrument.tick_size / 2


async def test_a_click_on_kill_cancels_the_replicas_open_orders(live: Live) -> None:
    async with chromium_page() as page:
        await page.goto(live.dashboard)
        await enter_token(page)
        # The page lists the orders resting at the replica, read from the journal.
        await page.wait_for_selector("#open-orders-binance-BTCUSDT tbody tr >> nth=3")
        shown = await page.eval_on_selector_all(
            "#open-orders-binance-BTCUSDT tbody tr td:first-child",
            "cells => cells.map(c => c.textContent)",
        )
        assert sorted(shown) == sorted(o.client_id for o in live.open_orders())
        # Dismissing the confirmation pulls nothing.
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
        await page.click("#kill")
        await asyncio.sleep(0.5)
        assert not live.run.killed and len(live.open_orders()) == 4
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.click("#kill")
        assert "kill switch pulled" in await result_text(page, "action-result", "kill switch")
        await wait_for(lambda: live.open_orders() == [], "the replica's orders cancelled")
    reason = await asyncio.wait_for(asyncio.shield(live.task), 30)
    assert live.run.killed and "kill switch" in reason
    cancelled = live.replica.orders(SYMBOL, open_only=False)
    assert cancelled and all(o.status == "canceled" for o in cancelled)
    kills = [r for r in control_records(live.run.run_dir) if r["what"] == "kill"]
    assert [(r["who"], r["status"]) for r in kills] == [("desk", 200)]


async def test_a_param_edit_in_the_page_shows_up_in_the_next_quotes(
    live: Live, registry: PluginRegistry
) -> None:
    bid, ask = innermost(live.open_orders())
    reference = mid(live)
    assert ask - bid < reference * Decimal("20e-4")  # 8 bps a side
    async with chromium_page() as page:
        await page.goto(live.dashboard)
        await enter_token(page)
        # A refused value: the manifest's own message, and the running params kept.
        await page.fill("#params-mm", '{"spread_bps": -3}')
        await page.click("#apply-mm")
        refused = await result_text(page, "params-msg-mm", "spread_bps")
        assert live.run.manifest_path is not None
        with pytest.raises(ManifestError) as manifest_says:
            load_manifest(
                live.run.manifest_path, registry, overrides=["strategies.mm.params.spread_bps=-3"]
            )
        assert refused == str(manifest_says.value).replace("(from --set)", "(from the control API)")
        assert innermost(live.open_orders()) == (bid, ask)
        # An accepted one: the quotes at the replica move out to 40 bps a side.
        await page.fill("#params-mm", '{"spread_bps": 40}')
        await page.click("#apply-mm")
        assert "now runs with" in await result_text(page, "params-msg-mm", "spread_bps")

        def wide() -> bool:
            orders = live.open_orders()
            if len(orders) != 4:
                return False
            b, a = innermost(orders)
            return a - b > reference * Decimal("70e-4")

        await wait_for(wide, "the replica's quotes at the new spread")
        new_bid, new_ask = innermost(live.open_orders())
        assert new_bid < bid and new_ask > ask
        # ... and the page's open orders show those prices.
        tick = live.run.markets[MARKET].instrument.tick_size.normalize()
        wanted = format(new_ask.quantize(tick), "f")
        await page.wait_for_function(
            "p => [...document.querySelectorAll('#open-orders-binance-BTCUSDT td')]"
            ".some(c => c.textContent === p)",
            arg=wanted,
        )
    assert spread_bps(live.run) == 40


async def test_without_the_token_nothing_changes(live: Live) -> None:
    before = sorted(o.client_id for o in live.open_orders())
    victim = before[0]
    async with chromium_page() as page:
        await page.goto(live.dashboard)
        status = await page.text_content("#control-status")
        assert status is not None and "no token" in status
        await page.wait_for_selector(f"#cancel-{victim}")
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        for button in ("#kill", "#pull-all", "#reset-breakers", f"#cancel-{victim}"):
            await page.click(button)
            assert "no token" in await result_text(page, "action-result", "no token")
        # A request sent by hand, without the token or with a wrong one, is refused too.
        answers = await page.evaluate(
            """async id => {
              const out = [];
              for (const auth of [null, "Bearer wrong-token-wrong-token-0000"]) {
                const headers = auth ? {Authorization: auth} : {};
                for (const path of ["kill", "strategies/mm/pause", `orders/${id}/cancel`]) {
                  const r = await fetch("/api/control/" + path, {method: "POST", headers});
                  out.push([r.status, (await r.json()).error]);
                }
              }
              return out;
            }""",
            victim,
        )
    assert [status for status, _ in answers] == [401] * 6
    assert "no token" in answers[0][1] and "wrong token" in answers[3][1]
    await asyncio.sleep(0.5)
    assert not live.run.killed and not live.run.stop_requested
    assert not any(srt.halted for srt in live.run.strategies.values())
    assert sorted(o.client_id for o in live.open_orders()) == before
    assert control_records(live.run.run_dir) == []


async def test_buttons_pull_reset_pause_resume_and_cancel_one_order(live: Live) -> None:
    async with chromium_page() as page:
        await page.goto(live.dashboard)
        await enter_token(page)
        # With the token the venue's connection and book state come from the run itself.
        await page.wait_for_function(
            "[...document.querySelectorAll('#venues td')].map(c => c.textContent).join('|')"
            " === 'binance|live|BTCUSDT LIVE|0|4'"
        )
        # This run has no breakers: the button says there is nothing to reset (a 409).
        await page.click("#reset-breakers")
        shown = await result_text(page, "action-result", "reset")
        assert "nothing to reset ('all'): this run has no breakers" in shown
        await page.click("#pull-all")
        assert await result_text(page, "action-result", "pulled") == (
            "quotes of every strategy pulled"
        )
        await page.click("#pause-mm")
        assert "paused" in await result_text(page, "action-result", "paused")
        await wait_for(lambda: live.open_orders() == [], "the paused strategy's quotes pulled")
        await page.click("#resume-mm")
        await wait_for(lambda: len(live.open_orders()) == 4, "quotes back after resume")
        victim = live.open_orders()[0].client_id
        others = sorted(o.client_id for o in live.open_orders() if o.client_id != victim)
        await page.wait_for_selector(f"#cancel-{victim}")
        await page.click(f"#cancel-{victim}")
        assert "cancel sent" in await result_text(page, "action-result", victim)
        await wait_for(
            lambda: victim not in {o.client_id for o in live.open_orders()}, "the order cancelled"
        )
        assert set(others) <= {o.client_id for o in live.open_orders()}
        # An order that is gone is refused with the reason.
        await page.evaluate(
            "id => fetch('/api/control/orders/' + id + '/cancel', {method: 'POST',"
            " headers: {Authorization: 'Bearer ' + sessionStorage.getItem("
            "'quoteforge-control-token')}}).then(r => r.json()).then(j =>"
            " document.getElementById('action-result').textContent = j.error)",
            victim,
        )
        assert "nothing to cancel" in await result_text(page, "action-result", "nothing")
    records = control_records(live.run.run_dir)
    cancels = [r for r in records if r["what"] == f"orders/{victim}/cancel"]
    assert [r["status"] for r in cancels] == [200, 409]
    assert records[0]["status"] == 409  # the reset of a run without breakers
    assert [r["what"] for r in records][:4] == [
        "breakers/reset",
        "pull-quotes",
        "strategies/mm/pause",
        "strategies/mm/resume",
    ]


async def test_the_dashboard_passes_on_only_control_endpoints(live: Live) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for method, path, status in (
            ("POST", "/api/control/state", 404),
            ("GET", "/api/control/kill", 404),
            ("POST", "/api/control/openapi.json", 404),
            ("POST", "/api/control/strategies/mm/pause/../../kill", 404),
        ):
            async with session.request(method, live.dashboard + path, headers=headers) as r:
                assert r.status == status, (method, path, await r.text())
        # A page of another origin cannot drive it.
        async with session.post(
            live.dashboard + "/api/control/kill",
            headers={**headers, "Origin": "http://evil.example"},
        ) as r:
            assert r.status == 403
    assert not live.run.killed and len(live.open_orders()) == 4


def test_control_url_from_the_run_folder(tmp_path: Path) -> None:
    from quoteforge.plugins.report.dashboard_control import ControlRefusedError, control_url

    with pytest.raises(ControlRefusedError, match="serves no control API") as refused:
        control_url(tmp_path)
    assert refused.value.status == 503 and ENV_TOKEN in str(refused.value)
    (tmp_path / CONTROL_FILE).write_text(json.dumps({"url": "http://0.0.0.0:8766"}))
    assert control_url(tmp_path) == "http://127.0.0.1:8766"  # bound to all: reach loopback
    (tmp_path / CONTROL_FILE).write_text(json.dumps({"url": "http://[::]:8766/"}))
    assert control_url(tmp_path) == "http://[::1]:8766"
    (tmp_path / CONTROL_FILE).write_text(json.dumps({"url": "file:///etc/passwd"}))
    with pytest.raises(ControlRefusedError, match="not an http URL"):
        control_url(tmp_path)
