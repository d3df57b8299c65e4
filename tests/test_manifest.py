"""Manifest loading: every class of error names file, line, key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from quoteforge.manifest import ManifestError, load_manifest, parse_duration
from quoteforge.registry import PluginRegistry

GOOD = """\
run:
  name: t
  duration: 2m
  seed: 3
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          initial_price: 100
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params:
      order_size: 0.1
      spread_bps: 10
"""


def load(text: str, registry: PluginRegistry, **kw: object) -> object:
    return load_manifest("m.yaml", registry, text=text, **kw)  # type: ignore[arg-type]


def refused(text: str, registry: PluginRegistry, **kw: object) -> str:
    with pytest.raises(ManifestError) as info:
        load(text, registry, **kw)
    return str(info.value)


def test_good_manifest_resolves_params(registry: PluginRegistry) -> None:
    loaded = load(GOOD, registry)
    assert loaded.manifest.run.duration == 120.0
    params = loaded.params_of("strategies", "mm")
    assert params.spread_bps == 10
    assert loaded.manifest.strategies["mm"].symbols == ["BTC/USDT"]


def test_unknown_plugin_type_lists_installed(registry: PluginRegistry) -> None:
    text = GOOD.replace("type: pure_market_making", "type: pure_market_makin")
    msg = refused(text, registry)
    assert "m.yaml:14: strategies.mm.type: unknown strategy type 'pure_market_makin'" in msg
    assert "installed: " in msg and "pure_market_making" in msg


def test_unknown_key_names_allowed_keys(registry: PluginRegistry) -> None:
    text = GOOD.replace("      spread_bps: 10", "      spred_bps: 10")
    msg = refused(text, registry)
    assert "m.yaml:19: strategies.mm.params.spred_bps: unknown key" in msg
    assert "pure_market_making takes:" in msg and "spread_bps" in msg


def test_unknown_top_level_key(registry: PluginRegistry) -> None:
    msg = refused(GOOD + "risks: {}\n", registry)
    assert "m.yaml:20: risks: unknown key; expected one of:" in msg
    assert "risk" in msg


def test_wrong_type_names_value(registry: PluginRegistry) -> None:
    text = GOOD.replace("spread_bps: 10", "spread_bps: wide")
    msg = refused(text, registry)
    assert "m.yaml:19: strategies.mm.params.spread_bps:" in msg
    assert "'wide'" in msg and "number" in msg


def test_missing_required_value(registry: PluginRegistry) -> None:
    text = GOOD.replace("      order_size: 0.1\n", "")
    msg = refused(text, registry)
    assert "strategies.mm.params.order_size: required value is missing" in msg


def test_bad_yaml_reports_line(registry: PluginRegistry) -> None:
    msg = refused("run:\n  name: [unclosed\nexchanges: {}\n", registry)
    assert msg.startswith(("m.yaml:3:", "m.yaml:2:"))
    assert "bad YAML" in msg


def test_duplicate_key_is_an_error(registry: PluginRegistry) -> None:
    text = GOOD.replace("  seed: 3\n", "  seed: 3\n  seed: 4\n")
    msg = refused(text, registry)
    assert "m.yaml:5: run.seed: duplicate key (first defined on line 4)" in msg


def test_strategy_must_name_a_defined_exchange_and_market(registry: PluginRegistry) -> None:
    msg = refused(GOOD.replace("exchange: sim", "exchange: binance"), registry)
    assert "strategies.mm.exchange: no exchange 'binance'; defined: sim" in msg
    msg = refused(GOOD.replace("symbols: BTC/USDT", "symbols: ETH/USDT"), registry)
    assert "exchange 'sim' has no market 'ETH/USDT'; it defines: BTC/USDT" in msg


def test_bad_mode_and_duration(registry: PluginRegistry) -> None:
    msg = refused(GOOD.replace("duration: 2m", "duration: soon"), registry)
    assert "run.duration" in msg and "duration like" in msg
    msg = refused(GOOD.replace("  name: t\n", "  name: t\n  mode: yolo\n"), registry)
    assert "run.mode" in msg and "'sim', 'backtest', 'paper' or 'live'" in msg


def test_env_substitution_and_secret_tracking(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QF_TEST_NAME", "from-env-value")
    loaded = load(GOOD.replace("name: t", "name: ${QF_TEST_NAME}"), registry)
    assert loaded.manifest.run.name == "from-env-value"
    assert "from-env-value" in loaded.secrets
    assert "${QF_TEST_NAME}" in loaded.text  # the file text itself never holds the secret


def test_missing_env_variable(registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QF_NOT_SET", raising=False)
    msg = refused(GOOD.replace("name: t", "name: ${QF_NOT_SET}"), registry)
    assert "m.yaml:2: run.name: environment variable QF_NOT_SET is not set" in msg
    loaded = load(GOOD.replace("name: t", "name: ${QF_NOT_SET:-fallback}"), registry)
    assert loaded.manifest.run.name == "fallback"


def test_overrides_apply_and_are_validated(registry: PluginRegistry) -> None:
    loaded = load(GOOD, registry, overrides=["strategies.mm.params.spread_bps=12", "run.seed=9"])
    assert loaded.params_of("strategies", "mm").spread_bps == 12
    assert loaded.manifest.run.seed == 9
    msg = refused(GOOD, registry, overrides=["strategies.mm.params.spread_bps=-1"])
    assert "strategies.mm.params.spread_bps (from --set):" in msg and "greater than 0" in msg
    msg = refused(GOOD, registry, overrides=["no-equals-sign"])
    assert "expected KEY.PATH=VALUE" in msg


def test_one_strategy_per_market(registry: PluginRegistry) -> None:
    second = """\
  mm2:
    type: pure_market_making
    exchange: sim
    symbols: [BTC/USDT]
    params: {order_size: 1}
"""
    msg = refused(GOOD + second, registry)
    assert "market sim:BTC/USDT is already quoted by strategy 'mm'" in msg


def test_sim_params_are_checked(registry: PluginRegistry) -> None:
    msg = refused(
        GOOD.replace("initial_price: 100", "initial_price: 100\n          kind: binary"), registry
    )
    assert "binary contract's initial_price must be inside (0, 1)" in msg


def test_missing_file(registry: PluginRegistry, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "nope.yaml", registry)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("1.5h", 5400.0), ("250ms", 0.25)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_every_example_manifest_validates(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "KRAKEN_API_KEY", "KRAKEN_API_SECRET"):
        monkeypatch.setenv(var, f"test-{var.lower()}")
    examples = Path(__file__).resolve().parent.parent / "examples"
    manifests = list(examples.glob("*.yaml"))
    assert manifests, "examples/ holds manifests"
    for path in manifests:
        load_manifest(path, registry)


def test_secrets_must_come_from_the_environment(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    literal = GOOD.replace(
        "    type: sim\n", "    type: sim\n    secrets: {api_key: hunter2hunter2}\n"
    )
    msg = refused(literal, registry)
    assert "exchanges.sim.secrets.api_key: a secret must come from the environment" in msg
    assert "hunter2hunter2" not in msg
    monkeypatch.setenv("QF_TEST_KEY", "k-123456789")
    ok = GOOD.replace(
        "    type: sim\n", "    type: sim\n    secrets: {api_key: '${QF_TEST_KEY}'}\n"
    )
    loaded = load(ok, registry)
    assert loaded.manifest.exchanges["sim"].secrets == {"api_key": "k-123456789"}
    assert "k-123456789" in loaded.secrets
