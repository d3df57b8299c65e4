"""A manifest that would trade a real venue unsafely is refused before anything connects:
a real venue (binance, binance_usdm, kraken, ccxt) in a simulated mode (sim, backtest),
and a live run without its API keys (no secrets, a misspelled name, an empty variable).
Paper runs, which read public data only, need no keys; a live run whose keys were left
out on purpose (``secrets: {}``) is refused too."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from quoteforge.cli import main
from quoteforge.clock import LiveClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance.adapter import create_binance
from quoteforge.exchanges.binance_usdm.adapter import create_binance_usdm
from quoteforge.exchanges.ccxt.adapter import create_ccxt
from quoteforge.exchanges.ccxt_base import VenueCallError
from quoteforge.exchanges.kraken.adapter import create_kraken
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins.record import load_market_data_manifest
from quoteforge.registry import PluginRegistry

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"

#: Every real venue type here: (params, a symbol, its factory).
VENUES: dict[str, tuple[dict[str, Any], str, Any]] = {
    "binance": ({"testnet": True}, "BTCUSDT", create_binance),
    "binance_usdm": ({}, "ETHUSDT", create_binance_usdm),
    "kraken": ({}, "BTC/USD", create_kraken),
    "ccxt": ({"exchange": "binance"}, "BTC/USDT", create_ccxt),
}
KEYS = {"QF_GUARD_KEY": "guard-key-1234", "QF_GUARD_SECRET": "guard-secret-5678"}


def manifest(
    path: Path,
    venue_type: str,
    mode: str,
    secrets: dict[str, str] | None,
    params: dict[str, Any] | None = None,
) -> Path:
    """A one-venue manifest named ``venue`` of ``venue_type``; ``secrets`` None leaves
    the block out."""
    default_params, symbol, _ = VENUES[venue_type]
    exchange: dict[str, Any] = {"type": venue_type, "params": params or default_params}
    if secrets is not None:
        exchange["secrets"] = secrets
    data = {
        "run": {"name": "guard", "mode": mode, "duration": 2, "watch_manifest": False},
        "exchanges": {"venue": exchange},
        "strategies": {
            "mm": {
                "type": "pure_market_making",
                "exchange": "venue",
                "symbols": symbol,
                "params": {"spread_bps": 8, "order_size": 0.001},
            }
        },
        "report": {"html": False, "png": False},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def keys() -> dict[str, str]:
    return {"api_key": "${QF_GUARD_KEY}", "api_secret": "${QF_GUARD_SECRET}"}


@pytest.fixture(autouse=True)
def _keys_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


# -- a real venue in a simulated mode ------------------------------------------------------


@pytest.mark.parametrize("mode", ["sim", "backtest"])
@pytest.mark.parametrize("venue_type", sorted(VENUES))
def test_validate_refuses_a_real_venue_in_a_simulated_mode(
    venue_type: str, mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path / "m.yaml", venue_type, mode, keys())
    code, text = validate(path, capsys)
    assert code == 2, text
    assert f"exchange 'venue' is of type '{venue_type}', a real venue" in text
    assert f"run.mode is '{mode}'" in text
    assert "type: sim" in text and "type: replay" in text and "run.mode: paper" in text


def test_load_manifest_names_the_exchange_type_and_mode(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    path = manifest(tmp_path / "m.yaml", "binance", "sim", keys())
    with pytest.raises(ManifestError, match=r"exchanges\.venue\.type: exchange 'venue' is of"):
        load_manifest(path, registry)
    # The same manifest switched to paper is what "trying it" on the venue means.
    assert load_manifest(path, registry, overrides=["run.mode=paper"]).manifest.run.mode


@pytest.mark.parametrize("mode", ["sim", "backtest"])
def test_run_refuses_a_real_venue_in_a_simulated_mode_and_sends_nothing(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``quoteforge run`` on a replica holding the account the keys open: refused, no
    order reaches the venue, no run folder is made."""

    async def scenario() -> tuple[int, int]:
        replica = BinanceReplica(ping_interval=0.2)
        await replica.start()
        try:
            urls = {"rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
            secrets = {"api_key": "${QF_GUARD_KEY}", "api_secret": "${QF_GUARD_SECRET}"}
            with pytest.MonkeyPatch.context() as env:
                env.setenv("QF_GUARD_KEY", replica.api_key)
                env.setenv("QF_GUARD_SECRET", replica.api_secret)
                path = manifest(tmp_path / "m.yaml", "binance", mode, secrets, urls)
                argv = ["run", str(path), "--quiet", "--out", str(tmp_path / "run")]
                code = await asyncio.to_thread(main, argv)
            return code, len(replica.orders("BTCUSDT", open_only=False))
        finally:
            await replica.stop()

    code, orders = asyncio.run(scenario())
    text = capsys.readouterr().err
    assert code == 2, text
    assert orders == 0
    assert f"exchange 'venue' is of type 'binance', a real venue, and run.mode is '{mode}'" in text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("venue_type", sorted(VENUES))
def test_the_adapter_refuses_a_simulated_mode_without_a_manifest(venue_type: str) -> None:
    params, symbol, factory = VENUES[venue_type]
    ctx = VenueContext("venue", LiveClock(), 1, "sim", [symbol], secrets={"api_key": "k"})
    with pytest.raises(ValueError, match=r"a real venue, and run\.mode is 'sim'"):
        factory(params, ctx)


# -- a live run's secrets --------------------------------------------------------------------


@pytest.mark.parametrize("venue_type", sorted(VENUES))
def test_live_without_a_secrets_block_is_refused(
    venue_type: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = validate(manifest(tmp_path / "m.yaml", venue_type, "live", None), capsys)
    assert code == 2, text
    assert "exchanges.venue.secrets: run.mode live trades on exchange 'venue'" in text
    assert "api_key: ${VENUE_API_KEY}, api_secret: ${VENUE_API_SECRET}" in text


def test_a_misspelled_secret_is_refused_with_the_name_it_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {"api_key": "${QF_GUARD_KEY}", "api_secert": "${QF_GUARD_SECRET}"}
    code, text = validate(manifest(tmp_path / "m.yaml", "binance", "live", secrets), capsys)
    assert code == 2, text
    assert "takes no secret 'api_secert' (did you mean 'api_secret'?)" in text
    assert "needs the secret(s) api_secret" in text


def test_an_unknown_secret_is_refused_in_paper_mode_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {**keys(), "passphrase": "${QF_GUARD_KEY}"}
    code, text = validate(manifest(tmp_path / "m.yaml", "kraken", "paper", secrets), capsys)
    assert code == 2, text
    assert "exchanges.venue.secrets.passphrase: exchange 'venue' (type kraken) takes no" in text


def test_a_secret_from_an_empty_variable_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k, v in os.environ.items() if not v.strip()]:
        monkeypatch.delenv(name)  # so the empty variable is the only one
    monkeypatch.setenv("QF_GUARD_SECRET", "")
    code, text = validate(manifest(tmp_path / "m.yaml", "binance_usdm", "live", keys()), capsys)
    assert code == 2, text
    assert "exchanges.venue.secrets.api_secret: secret 'api_secret' of exchange 'venue'" in text
    assert "(QF_GUARD_SECRET) is set to an empty string" in text


def test_ccxt_okx_needs_its_passphrase_and_takes_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = {"exchange": "okx"}
    path = manifest(tmp_path / "m.yaml", "ccxt", "live", keys(), params)
    code, text = validate(path, capsys)
    assert code == 2, text
    assert "needs the secret(s) password: add password: ${VENUE_PASSWORD}" in text
    path = manifest(tmp_path / "m.yaml", "ccxt", "live", {**keys(), "password": "${X1}"}, params)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("X1", "pass-phrase")
        assert validate(path, capsys)[0] == 0


@pytest.mark.parametrize("venue_type", sorted(VENUES))
def test_live_with_every_key_validates(
    venue_type: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = validate(manifest(tmp_path / "m.yaml", venue_type, "live", keys()), capsys)
    assert code == 0, text


@pytest.mark.parametrize("example", ["ccxt_paper.yaml", "binance_usdm_paper.yaml"])
def test_paper_examples_validate_without_any_key(
    example: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in KEYS:
        monkeypatch.delenv(name)
    code, text = validate(EXAMPLES / example, capsys)
    assert code == 0, text


@pytest.mark.parametrize("venue_type", sorted(VENUES))
def test_a_live_run_with_its_keys_left_out_is_refused_and_record_still_reads_it(
    venue_type: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    registry: PluginRegistry,
) -> None:
    """``secrets: {}`` written out in a live manifest is refused like a missing block: a
    live run cannot reconcile or trade without keys. ``quoteforge record`` still reads
    the manifest, as a paper run with the secrets emptied (market data needs no keys)."""
    path = manifest(tmp_path / "m.yaml", venue_type, "live", {})
    code, text = validate(path, capsys)
    assert code == 2, text
    assert "exchanges.venue.secrets: a live run on exchange 'venue'" in text
    assert "needs the secret(s) api_key" in text
    loaded = load_market_data_manifest(path, registry)
    assert loaded.manifest.run.mode == "paper"
    assert loaded.manifest.exchanges["venue"].secrets == {}
    with_keys = manifest(tmp_path / "k.yaml", venue_type, "live", keys())
    assert load_market_data_manifest(with_keys, registry).manifest.exchanges["venue"].secrets == {}


def test_the_ccxt_adapter_does_not_answer_cannot_tell_without_keys() -> None:
    """Without keys the generic adapter's reconciliation reads raise instead of None,
    which a run takes for "this venue cannot tell" and skips."""
    params, symbol, _ = VENUES["ccxt"]
    venue = create_ccxt(params, VenueContext("venue", LiveClock(), 1, "live", [symbol]))

    async def reads() -> list[str]:
        refused = []
        for read in (venue.fetch_open_orders(), venue.fetch_fills(0), venue.fetch_balances()):
            with pytest.raises(VenueCallError, match="no API credentials") as exc:
                await read
            refused.append(exc.value.kind)
        return refused

    assert asyncio.run(reads()) == ["auth", "auth", "auth"]


def test_polymarket_needs_its_four_secrets_live_and_no_simulated_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (EXAMPLES / "polymarket.yaml").read_text(encoding="utf-8")
    for name in ("PRIVATE_KEY", "API_KEY", "API_SECRET", "PASSPHRASE"):
        monkeypatch.setenv(f"POLYMARKET_{name}", "x" * 12)
    left_out = tmp_path / "left_out.yaml"
    left_out.write_text(text.replace("      passphrase: ${POLYMARKET_PASSPHRASE}\n", ""))
    code, out = validate(left_out, capsys)
    assert code == 2, out
    assert "needs the secret(s) passphrase: add passphrase: ${POLYMARKET_PASSPHRASE}" in out
    simulated = tmp_path / "simulated.yaml"
    simulated.write_text(text.replace("mode: live", "mode: sim"))
    code, out = validate(simulated, capsys)
    assert code == 2 and "of type 'polymarket', a real venue, and run.mode is 'sim'" in out
    assert validate(EXAMPLES / "polymarket.yaml", capsys)[0] == 0
