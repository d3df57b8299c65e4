"""Secrets taken from the environment never reach the run folder or the terminal, even
when a plugin logs carelessly at DEBUG."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

LAUNCHER = '''\
"""Runs the CLI with the webhook channel and a careless plugin registered."""
import sys

from loguru import logger

import quoteforge
from quoteforge.cli import main
from quoteforge.plugins import alert_webhook
from quoteforge.registry import load_registry


class Careless:
    @staticmethod
    @quoteforge.hookimpl
    def quoteforge_run_started(run):
        logger.debug("careless plugin, whole manifest: {}", run.loaded.data)
        params = run.loaded.params_of("alerts", "ops")
        logger.debug("careless plugin, webhook params: {!r} url={}", params, params.url)

    @staticmethod
    @quoteforge.hookimpl
    def quoteforge_alert(run, alert):
        token = run.loaded.data["alerts"]["ops"]["params"]["headers"]["Authorization"]
        raise RuntimeError(f"could not forward {alert.kind} with {token}")


registry = load_registry()
if not registry.pm.is_registered(alert_webhook):
    registry.register_module(alert_webhook, "alert_webhook")
registry.register_module(Careless, "careless")
sys.exit(main(sys.argv[1:]))
'''

MANIFEST = """\
run: {name: secrets, duration: 40s, seed: 2}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          flow: {arrival_rate: 3.0, reach: 15.0, size: 0.05}
          outages: [{at: 10s, duration: 6s}]
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {spread_bps: 4, order_size: 0.05}
report: {html: true, png: true}
alerting: {stale_after: 2s}
alerts:
  ops:
    type: webhook
    params:
      url: "http://127.0.0.1:PORT/hook/${QF_TEST_HOOK_PATH}"
      headers: {Authorization: "Bearer ${QF_TEST_SECRET}"}
      retries: 2
      backoff: 0.05
"""


async def test_env_secrets_stay_out_of_the_run_folder_and_stderr(tmp_path: Path) -> None:
    secret = "qfS3cret-" + secrets.token_hex(12)
    hook_path = "hookpath-" + secrets.token_hex(12)  # a name that does not look secret
    received: list[dict[str, Any]] = []
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.Response(status=503)  # the first attempt fails: a retry is logged
        received.append({"auth": request.headers.get("Authorization"), **await request.json()})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(f"/hook/{hook_path}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    manifest = tmp_path / "secrets.yaml"
    manifest.write_text(MANIFEST.replace("PORT", str(port)))
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "QF_TEST_SECRET": secret,
        "QF_TEST_HOOK_PATH": hook_path,
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(launcher),
            "run",
            str(manifest),
            "--out",
            str(run_dir),
            "--log-level",
            "DEBUG",
            "--json-log",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        await runner.cleanup()
    err = stderr.decode("utf-8", errors="replace")
    assert proc.returncode == 0, err[-3000:]

    # The secrets were really used: the endpoint got the header and the path.
    assert received and all(r["auth"] == f"Bearer {secret}" for r in received)
    assert {r["kind"] for r in received} == {"stale_book"}
    # The careless plugin's lines were written, with the values masked.
    assert "careless plugin, whole manifest" in err and "Bearer ***" in err
    log = (run_dir / "log.jsonl").read_text(encoding="utf-8")
    assert "careless plugin, whole manifest" in log and "could not forward stale_book" in log
    written = sorted(p.name for p in run_dir.rglob("*") if p.is_file())
    for name in ("log.jsonl", "trace.jsonl", "journal.sqlite", "manifest.yaml", "run.json"):
        assert name in written
    assert "report.html" in written and any(n.endswith(".png") for n in written)

    for value in (secret, hook_path):
        leaks = [
            str(p.relative_to(run_dir))
            for p in run_dir.rglob("*")
            if p.is_file() and value.encode() in p.read_bytes()
        ]
        assert leaks == [], f"secret found in {leaks}"
        assert value not in err
        assert value not in stdout.decode("utf-8", errors="replace")
    assert "${QF_TEST_SECRET}" in (run_dir / "manifest.yaml").read_text()


TRACEBACK_SCRIPT = """\
import os
import sys
from pathlib import Path

from loguru import logger

from quoteforge.logs import configure_logging

configure_logging("DEBUG", json_path=Path(sys.argv[1]), secrets=[os.environ["QF_TEST_SECRET"]])


def forward_alert():
    token = os.environ["QF_TEST_SECRET"]
    raise RuntimeError("alert forwarding failed after " + str(len(token)) + " bytes")


try:
    forward_alert()
except RuntimeError as exc:
    logger.opt(exception=exc).error("observer hook failed: {}", exc)
logger.complete()
"""


def test_secrets_in_traceback_variables_are_not_logged(tmp_path: Path) -> None:
    secret = "qfS3cret-" + secrets.token_hex(12)
    script = tmp_path / "forward.py"
    script.write_text(TRACEBACK_SCRIPT)
    log = tmp_path / "log.jsonl"
    proc = subprocess.run(
        [sys.executable, str(script), str(log)],
        env={**os.environ, "QF_TEST_SECRET": secret},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "observer hook failed" in proc.stderr and "forward_alert" in proc.stderr
    assert secret not in proc.stderr
    assert secret not in log.read_text(encoding="utf-8")
