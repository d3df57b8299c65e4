"""The HTTP control API inside a running run (plugins/control_http.py): real sim runs,
driven over 127.0.0.1 with the aiohttp client."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from own_strategies import register_strategy

from quoteforge.clock import NS
from quoteforge.engine import Run
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins.control_http import (
    CONTROL_FILE,
    ENV_ADDR,
    ENV_ALLOW_HOSTS,
    ENV_EXPOSE,
    ENV_TOKEN,
    ENV_WHO,
    MIN_TOKEN_LENGTH,
    ControlSettingsError,
    control_server_of,
    create_control_app,
    openapi_document,
    settings_from_env,
)
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMaking, PureMarketMakingParams

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

MANIFEST = """\
run:
  name: control
  duration: 6h
  seed: 3
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {model: brownian, sigma: 0.0001}
          flow: {arrival_rate: 3.0, reach: 15.0, size: 0.05}
          liquidity: {levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}
        ETH/USDT:
          tick_size: "0.01"
          lot_size: "0.001"
          initial_price: 2000
          process: {model: brownian, sigma: 0.0001}
          flow: {arrival_rate: 3.0, reach: 1.0, size: 0.5}
          liquidity: {levels: 5, distance: 1.5, spacing: 0.5, size: 2}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: [BTC/USDT]
    params: {spread_bps: 4, order_size: 0.05, levels: 1}
  mm_eth:
    type: pure_market_making
    exchange: sim
    symbols: [ETH/USDT]
    params: {spread_bps: 10, order_size: 0.5, levels: 1}
report: {html: false, png: false}
"""

Call = Callable[..., Awaitable[tuple[int, Any]]]

# Bounds on the waits below, in wall-clock seconds: a broken server or a stalled run
# fails the test instead of hanging it. Far above what a loaded CI machine needs.
STARTUP_S = 30.0
STALL_S = 30.0
STOP_S = 30.0


@pytest.fixture
def control_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_ADDR, ENV_EXPOSE, ENV_ALLOW_HOSTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_TOKEN, TOKEN)
    monkeypatch.setenv(ENV_WHO, "desk-bot")


def spread_bps(run: Run) -> float:
    """The running params of the pure_market_making strategy "mm"."""
    params = run.strategies["mm"].strategy.params
    assert isinstance(params, PureMarketMakingParams)
    return params.spread_bps


def make_run(registry: PluginRegistry, tmp_path: Path) -> Run:
    path = tmp_path / "control.yaml"
    path.write_text(MANIFEST)
    return Run(
        load_manifest(path, registry), registry, run_dir=tmp_path / "run", manifest_path=path
    )


@asynccontextmanager
async def running(run: Run) -> AsyncIterator[tuple[asyncio.Task[str], Call]]:
    """Run ``run`` in the background; yield its task and ``call(method, path, ...)``."""
    task = asyncio.create_task(run.run())
    info_path = run.run_dir / CONTROL_FILE
    deadline = time.monotonic() + STARTUP_S
    while not info_path.exists() or not run.markets:
        assert not task.done(), "the run ended before its control API came up"
        if time.monotonic() > deadline:
            run.request_stop("control API never came up")
            await asyncio.wait_for(task, STOP_S)
            raise AssertionError(f"no {CONTROL_FILE} within {STARTUP_S} s of the run's start")
        await asyncio.sleep(0.01)
    url = json.loads(info_path.read_text())["url"]
    async with aiohttp.ClientSession() as session:

        async def call(
            method: str, path: str, *, headers: dict[str, str] | None = AUTH, **kw: Any
        ) -> tuple[int, Any]:
            async with session.request(method, url + path, headers=headers, **kw) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text)
                except ValueError:
                    return resp.status, text

        try:
            yield task, call
        finally:
            if not task.done():
                run.request_stop("test done")
            await asyncio.wait_for(task, STOP_S)


async def sim_time_passes(run: Run, seconds: float) -> None:
    """Wait until ``seconds`` of simulated time have passed (or the run stops); fail when
    the simulation stalls instead of waiting forever."""
    until = run.clock.now_ns() + int(seconds * NS)
    deadline = time.monotonic() + STALL_S
    while run.clock.now_ns() < until and not run.stop_requested:
        assert time.monotonic() < deadline, f"{seconds} s of sim time took over {STALL_S} s"
        await asyncio.sleep(0.005)


def journal(run_dir: Path, kind: str) -> list[tuple[int, dict[str, Any]]]:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute(
            "SELECT ts_ns, payload FROM journal WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()
    finally:
        conn.close()
    return [(ts, json.loads(p)) for ts, p in rows]


def working_of(run: Run, strategy: str) -> list[Any]:
    return [o for o in run.orders.all_working() if o.strategy == strategy]


def test_without_the_token_nothing_changes(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    run = make_run(registry, tmp_path)

    async def scenario() -> None:
        async with running(run) as (task, call):
            await sim_time_passes(run, 5)
            wrong = {"Authorization": "Bearer not-the-token-at-all-000000"}
            asks = [
                (method, path, headers)
                for headers in (None, wrong, {"Authorization": TOKEN})
                for method, path in (
                    ("POST", "/kill"),
                    ("POST", "/strategies/mm/pause"),
                    ("POST", "/pull-quotes"),
                    ("POST", "/strategies/mm/params"),
                    ("GET", "/state"),
                    ("GET", "/openapi.json"),
                )
            ]
            # All at once: the simulation shares the event loop with client and server,
            # so one request after another would each wait out several of its slices.
            answers = await asyncio.gather(
                *(
                    call(method, path, headers=headers, json=body)
                    for method, path, headers in asks
                    for body in [{"spread_bps": 50} if path.endswith("params") else None]
                )
            )
            for (method, path, _), (status, answer) in zip(asks, answers, strict=True):
                assert status == 401, (method, path, answer)
                assert ENV_TOKEN in answer["error"]
            # a page elsewhere cannot reach it through DNS rebinding, even with the token
            status, answer = await call("GET", "/state", headers={**AUTH, "Host": "evil.test"})
            assert status == 403 and "evil.test" in answer["error"]
            status, _ = await call("GET", "/state", headers={**AUTH, "Origin": "http://x.test"})
            assert status == 403
            assert not run.killed and not run.stop_requested
            assert not any(srt.halted for srt in run.strategies.values())
            assert spread_bps(run) == 4
            assert working_of(run, "mm")
            assert not task.done()

    asyncio.run(scenario())
    assert run.stop_reason == "test done"
    assert journal(run.run_dir, "control") == []
    assert not (run.run_dir / CONTROL_FILE).exists()  # removed when the run stops


def test_kill_cancels_every_order_and_stops_the_run(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    run = make_run(registry, tmp_path)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with running(run) as (task, call):
            info = run.run_dir / CONTROL_FILE
            seen["mode"] = stat.S_IMODE(info.stat().st_mode)
            seen["info"] = info.read_text()
            await sim_time_passes(run, 5)
            status, state = await call("GET", "/state")
            assert status == 200
            btc = state["markets"]["sim:BTC/USDT"]
            assert btc["working_orders"] > 0
            # The touch as exact decimal text on the market's tick.
            bid, ask = Decimal(btc["best_bid"]), Decimal(btc["best_ask"])
            assert 0 < bid < ask and bid % Decimal("0.01") == 0
            assert state["strategies"]["mm"]["halted"] is False
            status, answer = await call("POST", "/kill")
            assert status == 200, answer
            assert run.killed
            # The cancels are sent, not confirmed: the answer says how many are pending.
            pending = re.search(r"(\d+) order\(s\) not yet confirmed cancelled", answer["result"])
            assert pending and int(pending.group(1)) > 0, answer
            await asyncio.wait_for(task, STOP_S)
            venue_open = await run.venues["sim"].fetch_open_orders()
            seen["venue_open"] = venue_open

    asyncio.run(scenario())
    assert seen["mode"] == 0o600
    assert TOKEN not in seen["info"] and json.loads(seen["info"])["url"].startswith("http://127.")
    assert run.stop_reason == "kill switch: control API (desk-bot)"
    assert run.orders.all_working() == []
    assert not seen["venue_open"]
    records = journal(run.run_dir, "control")
    assert [(p["who"], p["what"], p["status"]) for _, p in records] == [("desk-bot", "kill", 200)]
    assert records[0][1]["when"] and "cancelled" in records[0][1]["result"]
    raw = (run.run_dir / "journal.sqlite").read_bytes()
    assert TOKEN.encode() not in raw


def test_pause_stops_new_orders_of_that_strategy_until_resume(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    run = make_run(registry, tmp_path)

    async def scenario() -> None:
        async with running(run) as (_, call):
            await sim_time_passes(run, 5)
            status, answer = await call("POST", "/strategies/mm/pause")
            assert status == 200, answer
            assert run.strategies["mm"].halted
            await sim_time_passes(run, 120)
            assert working_of(run, "mm") == []
            assert working_of(run, "mm_eth")
            status, state = await call("GET", "/state")
            assert state["strategies"]["mm"]["halted"] is True
            assert state["markets"]["sim:BTC/USDT"]["working_orders"] == 0
            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": 9})
            assert status == 409 and "resume it" in answer["error"]
            assert spread_bps(run) == 4
            status, answer = await call("POST", "/strategies/nope/pause")
            assert status == 404 and "mm_eth" in answer["error"]
            status, answer = await call("POST", "/strategies/mm/resume")
            assert status == 200, answer
            await sim_time_passes(run, 30)
            assert working_of(run, "mm")

    asyncio.run(scenario())
    control = journal(run.run_dir, "control")
    assert [(p["what"], p["status"]) for _, p in control] == [
        ("strategies/mm/pause", 200),
        ("strategies/mm/params", 409),
        ("strategies/nope/pause", 404),
        ("strategies/mm/resume", 200),
    ]
    paused_at, resumed_at = control[0][0], control[3][0]
    orders = [(ts, p.get("order", p)) for ts, p in journal(run.run_dir, "order")]

    def new_orders(strategy: str, start: int, end: int) -> int:
        return sum(1 for ts, o in orders if o.get("strategy") == strategy and start < ts < end)

    assert new_orders("mm", paused_at, resumed_at) == 0
    assert new_orders("mm_eth", paused_at, resumed_at) > 0
    assert new_orders("mm", resumed_at, 2**63) > 0


class NarrowMarketMaking(PureMarketMaking):
    """Refuses, in ``on_params``, what only the strategy knows is wrong for it."""

    def on_params(self, params: Any, **kwargs: Any) -> None:
        if params.spread_bps > 20:
            raise ValueError("spreads over 20 bps lose this desk its rebate tier")
        super().on_params(params, **kwargs)


def test_params_the_strategy_refuses_are_answered_with_its_reason(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    register_strategy(registry, "narrow_mm", NarrowMarketMaking)
    path = tmp_path / "control.yaml"
    path.write_text(MANIFEST.replace("type: pure_market_making", "type: narrow_mm", 1))
    run = Run(load_manifest(path, registry), registry, run_dir=tmp_path / "run", manifest_path=path)

    async def scenario() -> None:
        async with running(run) as (_, call):
            await sim_time_passes(run, 5)
            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": 30})
            assert status == 409, answer
            assert "refused the params change {'spread_bps': 30.0}" in answer["error"]
            assert "rebate tier" in answer["error"]
            assert spread_bps(run) == 4 and not run.strategies["mm"].halted  # still quoting

    asyncio.run(scenario())


def test_params_edit_reaches_the_next_quotes_and_a_bad_one_is_refused_like_a_manifest_edit(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    run = make_run(registry, tmp_path)
    bad_text = MANIFEST.replace("spread_bps: 4,", "spread_bps: -3,")
    with pytest.raises(ManifestError) as from_file:
        load_manifest(tmp_path / "bad.yaml", registry, text=bad_text)
    file_messages = [p.message for p in from_file.value.problems]

    def quoted_spread() -> float:
        orders = working_of(run, "mm")
        bids = [o.price_ticks for o in orders if int(o.side) > 0]
        asks = [o.price_ticks for o in orders if int(o.side) < 0]
        assert bids and asks
        return (min(asks) - max(bids)) * 0.01

    async def scenario() -> None:
        async with running(run) as (_, call):
            await sim_time_passes(run, 10)
            assert quoted_spread() < 40  # 4 bps of 30,000 is 12
            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": 40})
            assert status == 200, answer
            assert spread_bps(run) == 40
            await sim_time_passes(run, 10)
            assert quoted_spread() > 100  # 40 bps of 30,000 is 120

            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": -3})
            assert status == 422
            assert all(message in answer["error"] for message in file_messages), answer
            assert "strategies.mm.params.spread_bps (from the control API)" in answer["error"]
            status, answer = await call("POST", "/strategies/mm/params", json={"sprad_bps": 9})
            assert status == 422 and "sprad_bps" in answer["error"]
            status, answer = await call("POST", "/strategies/mm/params", data="[1]")
            assert status == 400 and "JSON object" in answer["error"]
            deep = '{"a":' * 5000  # nested past what the JSON reader recurses through
            status, answer = await call("POST", "/strategies/mm/params", data=deep)
            assert status == 400 and "nested too deep" in answer["error"], answer
            assert spread_bps(run) == 40  # kept
            assert not run.strategies["mm"].halted
            for odd in ("", "spread_bps=9", " spread_bps"):
                status, answer = await call("POST", "/strategies/mm/params", json={odd: 9})
                assert status == 422 and "not a param name" in answer["error"], odd

            # The same params again change nothing and say so; a later edit of a key
            # replaces the earlier one, so the run's overrides name each key once.
            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": 40})
            assert status == 200 and "already runs with these params" in answer["result"]
            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": 30})
            assert status == 200 and "now runs with" in answer["result"]
            spread_edits = [o for o in run.loaded.overrides if "spread_bps" in o]
            assert spread_edits == ["strategies.mm.params.spread_bps=30"]

    asyncio.run(scenario())
    control = [(p["what"], p["status"]) for _, p in journal(run.run_dir, "control")]
    assert journal(run.run_dir, "control")[0][1]["request"] == {"spread_bps": 40}
    assert control == [
        ("strategies/mm/params", 200),
        ("strategies/mm/params", 422),
        ("strategies/mm/params", 422),
        ("strategies/mm/params", 400),
        ("strategies/mm/params", 400),
        ("strategies/mm/params", 422),
        ("strategies/mm/params", 422),
        ("strategies/mm/params", 422),
        ("strategies/mm/params", 200),
        ("strategies/mm/params", 200),
    ]


def gone(run: Run, client_id: str) -> bool:
    order = run.orders.get(client_id)
    assert order is not None
    return order.status.name in ("PENDING_CANCEL", "CANCELLED", "FILLED")


def test_pull_quotes_and_breaker_reset(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    run = make_run(registry, tmp_path)

    async def scenario() -> None:
        async with running(run) as (_, call):
            await sim_time_passes(run, 5)
            before = [o.client_id for o in working_of(run, "mm")]
            assert before
            status, answer = await call("POST", "/pull-quotes", json={"strategy": "mm"})
            assert status == 200, answer
            # every quote of mm was cancelled by the request (it quotes again at its next
            # decision: a pull is not a pause)
            assert all(gone(run, cid) for cid in before)
            kept = [o.client_id for o in working_of(run, "mm_eth")]
            status, answer = await call("POST", "/pull-quotes")
            assert status == 200 and "every strategy" in answer["result"]
            assert all(gone(run, cid) for cid in kept)
            status, answer = await call("POST", "/pull-quotes", json={"strategy": "x"})
            assert status == 404
            status, answer = await call("POST", "/pull-quotes", json={"strat": "mm"})
            assert status == 422 and "strategy" in answer["error"]
            status, answer = await call("POST", "/pull-quotes", json={"strategy": ["mm"]})
            assert status == 422 and "must be a string" in answer["error"]
            # No breakers: nothing to reset, whatever the target (it answered 200 to any).
            for target in ("all", "bogus-target"):
                status, answer = await call("POST", "/breakers/reset", json={"target": target})
                assert status == 409 and "this run has no breakers" in answer["error"]

    asyncio.run(scenario())


def test_cancel_one_order_by_client_id(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    # Quotes far from the flow, kept unless the price moves 50 bps: they stay in place
    # while a request travels, however far the sim runs meanwhile.
    path = tmp_path / "control.yaml"
    path.write_text(MANIFEST)
    steady = ["strategies.mm.params.spread_bps=30", "strategies.mm.params.refresh_tolerance_bps=50"]
    loaded = load_manifest(path, registry, overrides=steady)
    run = Run(loaded, registry, run_dir=tmp_path / "run", manifest_path=path)
    picked: list[str] = []

    async def scenario() -> None:
        async with running(run) as (_, call):
            await sim_time_passes(run, 5)
            status, state = await call("GET", "/state")
            assert state["orders"] and all(run.orders.get(o["client_id"]) for o in state["orders"])
            assert {o["strategy"] for o in state["orders"]} == {"mm", "mm_eth"}
            cid = working_of(run, "mm")[0].client_id
            status, answer = await call("POST", f"/orders/{cid}/cancel")
            assert status == 200 and "cancel sent" in answer["result"], answer
            picked.append(cid)
            others = {o.client_id for o in run.orders.all_working()} - {cid}
            order = run.orders.get(cid)
            assert order is not None and order.status.value in ("pending_cancel", "cancelled")
            await sim_time_passes(run, 0.5)
            assert order.status.value == "cancelled"
            assert cid not in {o.client_id for o in run.orders.all_working()}
            status, answer = await call("POST", f"/orders/{cid}/cancel")
            assert status == 409 and "nothing to cancel" in answer["error"]
            status, answer = await call("POST", "/orders/no-such-order/cancel")
            assert status == 404 and "GET /state" in answer["error"]
            assert others, "other orders were working"
            assert not run.killed and not run.strategies["mm"].halted

    asyncio.run(scenario())
    control = journal(run.run_dir, "control")
    assert [(p["who"], p["what"], p["status"]) for _, p in control] == [
        ("desk-bot", f"orders/{picked[0]}/cancel", 200),
        ("desk-bot", f"orders/{picked[0]}/cancel", 409),
        ("desk-bot", "orders/no-such-order/cancel", 404),
    ]
    with (run.run_dir / "trace.jsonl").open() as fh:
        events = [json.loads(line) for line in fh if '"order_cancelled"' in line]
    assert [e["detail"] for e in events] == [f"{picked[0]} by control API (desk-bot)"]


def test_openapi_describes_every_endpoint(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    run = make_run(registry, tmp_path)
    settings = settings_from_env()
    assert settings is not None
    app = create_control_app(run, settings)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    doc = openapi_document()
    described = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert doc["openapi"].startswith("3.1")
    assert described == served
    # Every POST reads a JSON object (an empty one at least) and documents the 400 and
    # 422 answers for a bad one; a GET has no body.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            reads_body = method == "post"
            assert ("requestBody" in op) is reads_body, (method, path)
            assert ("422" in op["responses"]) is reads_body, (method, path)
    assert TOKEN not in json.dumps(doc)

    async def scenario() -> None:
        async with running(run) as (_, call):
            status, _ = await call("GET", "/openapi.json", headers=None)
            assert status == 401
            status, body = await call("GET", "/openapi.json")
            assert status == 200 and body == json.loads(json.dumps(doc))
            assert control_server_of(run) is not None

    asyncio.run(scenario())


def test_settings_from_the_environment() -> None:
    assert settings_from_env({}) is None
    ok = settings_from_env({ENV_TOKEN: TOKEN})
    assert ok is not None and (ok.host, ok.port, ok.who) == ("127.0.0.1", 0, "api")
    assert TOKEN not in repr(ok)
    with pytest.raises(ControlSettingsError, match=ENV_TOKEN):
        settings_from_env({ENV_ADDR: "127.0.0.1:9999"})
    with pytest.raises(ControlSettingsError, match="at least 16"):
        settings_from_env({ENV_TOKEN: "short"})
    with pytest.raises(ControlSettingsError, match="HOST:PORT"):
        settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "localhost"})
    with pytest.raises(ControlSettingsError, match=f"{ENV_EXPOSE}=1"):
        settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "0.0.0.0:8766"})
    exposed = settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "0.0.0.0:8766", ENV_EXPOSE: "1"})
    assert exposed is not None and exposed.host == "0.0.0.0"
    six = settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "[::1]:0"})
    assert six is not None and six.host == "::1"
    # The limits are inclusive: the highest port, a token of exactly the minimum length.
    top = settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "127.0.0.1:65535"})
    assert top is not None and top.port == 65535
    with pytest.raises(ControlSettingsError, match="is not HOST:PORT"):
        settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "127.0.0.1:65536"})
    assert settings_from_env({ENV_TOKEN: "x" * MIN_TOKEN_LENGTH}) is not None
    with pytest.raises(ControlSettingsError, match="at least 16"):
        settings_from_env({ENV_TOKEN: "x" * (MIN_TOKEN_LENGTH - 1)})


def test_an_exposed_server_answers_its_own_address_and_no_other_host(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    """Bound to a named address (QUOTEFORGE_CONTROL_EXPOSE=1), the server answers a Host
    of that address (and loopback names); any other Host is refused before the token is
    looked at. Served here on 127.0.0.1, with the Host header a client would send."""
    from aiohttp.test_utils import TestClient, TestServer

    settings = settings_from_env({ENV_TOKEN: TOKEN, ENV_ADDR: "10.1.2.3:8766", ENV_EXPOSE: "1"})
    assert settings is not None and settings.host == "10.1.2.3"
    app = create_control_app(make_run(registry, tmp_path), settings)

    async def scenario() -> None:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for host, expected in (
                ("10.1.2.3:8766", 200),
                ("localhost", 200),
                ("10.1.2.4:8766", 403),
                ("evil.test", 403),
            ):
                resp = await client.get("/openapi.json", headers={**AUTH, "Host": host})
                assert resp.status == expected, host

    asyncio.run(scenario())


def test_no_token_no_server(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (ENV_TOKEN, ENV_ADDR, ENV_EXPOSE, ENV_ALLOW_HOSTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_ADDR, "127.0.0.1:0")  # asked for, but no token: refused
    path = tmp_path / "short.yaml"
    path.write_text(MANIFEST.replace("duration: 6h", "duration: 30s"))
    run = Run(load_manifest(path, registry), registry, run_dir=tmp_path / "r", manifest_path=path)

    async def scenario() -> None:
        await run.start()
        assert control_server_of(run) is None
        assert not (run.run_dir / CONTROL_FILE).exists()
        run.request_stop("test done")
        await run.stop()

    asyncio.run(scenario())


def test_resume_says_which_breakers_still_hold_the_strategy(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    """A pause and a breaker are separate holds: resuming lifts the pause and says which
    breaker still halts the strategy's markets, and how to release it."""
    path = tmp_path / "control.yaml"
    path.write_text(MANIFEST)
    # The first loss off a PnL peak trips it.
    loaded = load_manifest(path, registry, overrides=["breakers.max_drawdown=0.00000001"])
    run = Run(loaded, registry, run_dir=tmp_path / "run", manifest_path=path)

    async def scenario() -> None:
        async with running(run) as (_, call):
            for _ in range(12):
                if run.breakers is not None and run.breakers.trips:
                    break
                await sim_time_passes(run, 5)
            assert run.breakers is not None and run.breakers.trips
            status, answer = await call("POST", "/strategies/mm/pause")
            assert status == 200, answer
            status, answer = await call("POST", "/strategies/mm/resume")
            assert status == 200, answer
            assert "resumed, but breaker(s) still hold its markets: drawdown" in answer["result"]
            assert "POST /breakers/reset" in answer["result"]
            assert not working_of(run, "mm")  # the breaker holds: nothing quoted
            status, answer = await call("POST", "/breakers/reset", json={"target": "bogus"})
            assert status == 422, answer

    asyncio.run(scenario())


def test_a_params_change_applies_the_api_keys_only_when_the_run_does_not_watch_its_file(
    registry: PluginRegistry, tmp_path: Path, control_env: None
) -> None:
    """With run.watch_manifest off, an edit waiting in the manifest file is not the
    run's: a params change through the API applies its own keys and leaves the file's
    edits (to this strategy or another) unapplied."""
    path = tmp_path / "control.yaml"
    path.write_text(MANIFEST)
    loaded = load_manifest(path, registry, overrides=["run.watch_manifest=false"])
    run = Run(loaded, registry, run_dir=tmp_path / "run", manifest_path=path)

    def eth_spread() -> float:
        params = run.strategies["mm_eth"].strategy.params
        assert isinstance(params, PureMarketMakingParams)
        return params.spread_bps

    async def scenario() -> None:
        async with running(run) as (_, call):
            await sim_time_passes(run, 5)
            edited = MANIFEST.replace("spread_bps: 10,", "spread_bps: 25,").replace(
                "order_size: 0.05, levels: 1", "order_size: 0.05, levels: 3"
            )
            path.write_text(edited)
            status, answer = await call("POST", "/strategies/mm/params", json={"spread_bps": 9})
            assert status == 200, answer
            assert spread_bps(run) == 9
            params = run.strategies["mm"].strategy.params
            assert isinstance(params, PureMarketMakingParams) and params.levels == 1
            assert eth_spread() == 10

    asyncio.run(scenario())
