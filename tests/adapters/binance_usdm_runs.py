"""Running the USDⓈ-M example manifests against the replica, for the USDⓈ-M run tests
(test_binance_usdm_e2e.py, test_binance_usdm_startstate.py): the manifest overrides that
point a run at the replica, the venue's long position, and waiting for a condition."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def overrides(replica: BinanceUsdmReplica, duration: str = "30s") -> list[str]:
    params = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url}
    return [
        *(f"exchanges.usdm.params.{k}={v}" for k, v in params.items()),
        "exchanges.usdm.params.testnet=false",
        f"run.duration={duration}",
        "run.cancel_timeout=20s",
        "report.html=false",
        "report.png=false",
    ]


async def wait_for(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def long_qty(replica: BinanceUsdmReplica) -> Decimal:
    return replica.positions.get(("ETHUSDT", "BOTH"), [Decimal(0)])[0]
