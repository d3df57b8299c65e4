"""A manifest refused for a value taken from the environment never shows that value
(it may be a secret), and a credential header's value must come from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from quoteforge.cli import main
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.registry import load_registry

BASE = """\
run: {name: secrets, duration: 10s, seed: 1}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT: {tick_size: "0.01", lot_size: "0.0001", initial_price: 30000}
strategies:
  mm: {type: pure_market_making, exchange: sim, symbols: BTC/USDT, params: {order_size: 0.01}}
"""

WEBHOOK = (
    BASE
    + """\
alerts:
  ops:
    type: webhook
    params:
      url: ${QF_HOOK_URL}
"""
)

BUS = (
    BASE
    + """\
bus:
  type: mqtt
  params:
    signing_key: ${QF_BUS_KEY}
"""
)


def _refusal(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, load_registry(), overrides=overrides)
    return str(caught.value)


def test_an_unusable_webhook_url_from_the_environment_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No scheme: refused. Long, so a shortened echo would still show its first 60 characters.
    secret = "hooks.chat.test/services/T000/B000/" + "SECRETPATH" * 8
    monkeypatch.setenv("QF_HOOK_URL", secret)
    said = _refusal(tmp_path, WEBHOOK)
    assert "alerts.ops.params.url" in said
    assert "from the environment (not shown)" in said
    assert "hooks.chat.test" not in said and "SECRETPATH" not in said
    # The command line says the same on stderr, through no log sink.
    (tmp_path / "cli.yaml").write_text(WEBHOOK)
    assert main(["validate", str(tmp_path / "cli.yaml")]) == 2
    err = capsys.readouterr().err
    assert "alerts.ops.params.url" in err and "SECRETPATH" not in err


def test_a_short_bus_signing_key_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QF_BUS_KEY", "SECRETK-01")
    said = _refusal(tmp_path, BUS)
    assert "bus.params.signing_key" in said and "shorter than 16 bytes" in said
    assert "SECRETK" not in said


def test_a_value_not_from_the_environment_is_still_shown(tmp_path: Path) -> None:
    said = _refusal(tmp_path, WEBHOOK.replace("${QF_HOOK_URL}", "hooks.example.com/x"))
    assert "got 'hooks.example.com/x'" in said


def test_a_credential_header_must_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QF_HOOK_URL", "https://hooks.example.com/x")
    literal = "alerts.ops.params.headers.Authorization=Bearer SECRETTOKEN-123"
    said = _refusal(tmp_path, WEBHOOK, [literal])
    assert "alerts.ops.params.headers.Authorization (from --set)" in said
    assert "a credential header" in said and "SECRETTOKEN" not in said
    # Read from the environment it loads, the secret among the run's secrets.
    monkeypatch.setenv("QF_TOKEN", "SECRETTOKEN-123")
    path = tmp_path / "ok.yaml"
    path.write_text(WEBHOOK)
    loaded = load_manifest(
        path,
        load_registry(),
        overrides=["alerts.ops.params.headers.Authorization=Bearer ${QF_TOKEN}"],
    )
    assert "SECRETTOKEN-123" in loaded.secrets
    # Another header may be written as it is.
    other = load_manifest(path, load_registry(), overrides=["alerts.ops.params.headers.X-Team=mm"])
    assert other.data["alerts"]["ops"]["params"]["headers"] == {"X-Team": "mm"}
