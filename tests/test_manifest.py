"""Manifest loading: every class of error names file, line, key and the fix."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from quoteforge.manifest import LoadedManifest, ManifestError, load_manifest, parse_duration
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMakingParams
from quoteforge.strategies.volatility_guard import VolatilityGuardedParams

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


def load(text: str, registry: PluginRegistry, overrides: list[str] | None = None) -> LoadedManifest:
    return load_manifest("m.yaml", registry, text=text, overrides=overrides)


def refused(text: str, registry: PluginRegistry, overrides: list[str] | None = None) -> str:
    with pytest.raises(ManifestError) as info:
        load(text, registry, overrides=overrides)
    return str(info.value)


def test_good_manifest_resolves_params(registry: PluginRegistry) -> None:
    loaded = load(GOOD, registry)
    assert loaded.manifest.run.duration == 120.0
    params = loaded.params_of("strategies", "mm")
    assert isinstance(params, PureMarketMakingParams)
    assert params.spread_bps == 10
    assert loaded.manifest.strategies["mm"].symbols == ["BTC/USDT"]


def test_unknown_plugin_type_lists_installed(registry: PluginRegistry) -> None:
    text = GOOD.replace("type: pure_market_making", "type: pure_market_makin")
    msg = refused(text, registry)
    assert (
        "m.yaml:14: strategies.mm.type: unknown strategy type 'pure_market_makin' "
        "(did you mean 'pure_market_making'?); installed: " in msg
    )


def test_unknown_key_names_allowed_keys(registry: PluginRegistry) -> None:
    text = GOOD.replace("      spread_bps: 10", "      spred_bps: 10")
    msg = refused(text, registry)
    assert (
        "m.yaml:19: strategies.mm.params.spred_bps: unknown key (did you mean 'spread_bps'?); "
        "pure_market_making takes:" in msg
    )


def test_unknown_top_level_key(registry: PluginRegistry) -> None:
    msg = refused(GOOD + "risks: {}\n", registry)
    assert "m.yaml:20: risks: unknown key (did you mean 'risk'?); expected one of:" in msg


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
    params = loaded.params_of("strategies", "mm")
    assert isinstance(params, PureMarketMakingParams)
    assert params.spread_bps == 12
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
    examples = Path(__file__).resolve().parent.parent / "examples"
    manifests = list(examples.glob("*.yaml"))
    assert manifests, "examples/ holds manifests"
    for path in manifests:
        # The live examples' keys come from the environment: give each one a value.
        for var in re.findall(r"\$\{([A-Z0-9_]+)\}", path.read_text(encoding="utf-8")):
            monkeypatch.setenv(var, f"test-{var.lower()}")
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


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://qf:hunter2hunter2@127.0.0.1/test",
        "host=127.0.0.1 password=hunter2hunter2 dbname=test",
        "host=127.0.0.1 password = 'hunter2 hunter2' dbname=test",
        "postgresql://qf@127.0.0.1/test?password=hunter2hunter2",
    ],
    ids=["uri", "conninfo", "conninfo-quoted", "uri-query"],
)
def test_a_password_written_into_a_value_is_refused_in_the_file_and_in_set(
    dsn: str, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run folder keeps the manifest and the --set overrides (run.json): a password
    # in either would be kept on disk beside the journal.
    in_file = GOOD + f"journal:\n  type: postgres\n  params: {{dsn: {dsn!r}}}\n"
    msg = refused(in_file, registry)
    assert "m.yaml:22: journal.params.dsn: a secret must come from the environment" in msg
    assert "hunter2" not in msg
    msg = refused(GOOD, registry, overrides=["journal.type=postgres", f"journal.params.dsn={dsn}"])
    assert "journal.params.dsn (from --set): a secret must come from the environment" in msg
    assert "hunter2" not in msg
    # From the environment, or no password at all (libpq reads PGPASSWORD): accepted.
    monkeypatch.setenv("QF_TEST_PG_PASSWORD", "hunter2hunter2")
    for fine in (
        "postgresql://qf:${QF_TEST_PG_PASSWORD}@127.0.0.1/test",
        "host=127.0.0.1 password=${QF_TEST_PG_PASSWORD} dbname=test",
        "postgresql://qf@127.0.0.1/test",
        "postgresql://qf:@127.0.0.1/test",
    ):
        overrides = ["journal.type=postgres", f"journal.params.dsn={fine}"]
        loaded = load(GOOD, registry, overrides=overrides)
        assert loaded.params_of("journal").dsn == fine.replace(  # type: ignore[attr-defined]
            "${QF_TEST_PG_PASSWORD}", "hunter2hunter2"
        )


def test_a_password_key_anywhere_must_come_from_the_environment(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = refused(
        GOOD,
        registry,
        overrides=["bus.type=mqtt", "bus.params.username=u", "bus.params.password=hunter2hunter2"],
    )
    assert "bus.params.password (from --set): a secret must come from the environment" in msg
    assert "hunter2" not in msg
    monkeypatch.setenv("QF_TEST_MQTT_PASSWORD", "hunter2hunter2")
    loaded = load(
        GOOD,
        registry,
        overrides=[
            "bus.type=mqtt",
            "bus.params.username=u",
            "bus.params.password=${QF_TEST_MQTT_PASSWORD}",
        ],
    )
    assert loaded.params_of("bus").password.get_secret_value() == "hunter2hunter2"  # type: ignore[attr-defined]


# -- manifests that cannot hurt ----------------------------------------------------------


def test_an_alias_bomb_is_refused_before_it_expands(registry: PluginRegistry) -> None:
    # 332 bytes that expand to 9**9 (387 million) strings when walked.
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    msg = refused(GOOD + "\n".join(lines) + "\n", registry)
    assert "YAML aliases expand to more than 10000 values" in msg
    assert msg.startswith("m.yaml:24:")  # the line of the alias that crossed the cap
    # A few aliases are fine: shared settings are what anchors are for.
    shared = GOOD.replace(
        "          initial_price: 100\n",
        "          initial_price: 100\n          flow: &flow {arrival_rate: 2}\n",
    )
    assert load(shared, registry).manifest.run.name == "t"


def test_an_alias_cycle_is_refused(registry: PluginRegistry) -> None:
    msg = refused(GOOD + "x: &loop [1, *loop]\n", registry)
    assert "m.yaml:20: alias *loop is used inside its own anchor &loop (a cycle)" in msg


@pytest.mark.parametrize(
    "nested",
    [
        "deep: " + "[" * 5000 + "]" * 5000 + "\n",
        "deep:\n" + "".join("  " * i + "- \n" for i in range(1, 600)),
        "deep: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    ],
    ids=["flow-lists", "block-lists", "flow-maps"],
)
def test_deep_nesting_is_refused_with_its_line(nested: str, registry: PluginRegistry) -> None:
    msg = refused(GOOD + nested, registry)
    assert "nested more than 64 levels deep" in msg
    assert msg.startswith(("m.yaml:20:", "m.yaml:84:"))


def test_files_that_are_not_utf8_text_or_not_a_mapping(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(GOOD.encode().replace(b"name: t", b"name: t\xff\xfe"))
    with pytest.raises(ManifestError, match=r"m.yaml:2: not UTF-8 text \(byte 0xff at column 10\)"):
        load_manifest(path, registry)
    path.write_bytes(GOOD.encode().replace(b"name: t", b'name: "t\x07"'))
    with pytest.raises(ManifestError, match=r"m.yaml:2: bad YAML: character U\+0007 is not"):
        load_manifest(path, registry)
    path.write_text("- run\n- exchanges\n")
    with pytest.raises(ManifestError, match=r"m.yaml:1: a manifest is a mapping .* got a list"):
        load_manifest(path, registry)
    path.write_text("# nothing yet\n")
    with pytest.raises(ManifestError, match=r"m.yaml:1: .* got an empty file"):
        load_manifest(path, registry)
    path.write_bytes(b"run: {}\n" + b"#" * (1 << 20))
    with pytest.raises(ManifestError, match="larger than 1024 KiB"):
        load_manifest(path, registry)
    with pytest.raises(ManifestError, match="is a folder"):
        load_manifest(tmp_path, registry)


def test_values_yaml_cannot_build_are_refused_with_their_line(registry: PluginRegistry) -> None:
    msg = refused(GOOD.replace("seed: 3", "seed: " + "9" * 5000), registry)
    assert "m.yaml:4: bad value: Exceeds the limit (4300 digits)" in msg
    msg = refused(GOOD.replace("name: t", "name: 2024-13-45"), registry)
    assert "m.yaml:2: bad value: month must be in 1..12" in msg


@pytest.mark.parametrize(
    ("old", "new", "line", "key"),
    [
        ("spread_bps: 10", "spread_bps: .nan", 19, "strategies.mm.params.spread_bps"),
        ("order_size: 0.1", "order_size: .inf", 18, "strategies.mm.params.order_size"),
        ("initial_price: 100", "initial_price: 1e400", 11, "exchanges.sim.params.markets."),
        ("spread_bps: 10", "spread_bps: 10\n      inventory_target: .nan", 20, "inventory_target"),
        ("seed: 3", "seed: 18446744073709551616", 4, "run.seed"),
    ],
)
def test_nan_infinity_and_huge_integers_are_refused_anywhere(
    old: str, new: str, line: int, key: str, registry: PluginRegistry
) -> None:
    msg = refused(GOOD.replace(old, new), registry)
    assert msg.startswith(f"m.yaml:{line}:") and key in msg
    assert "finite number" in msg or "fits in 64 bits" in msg


def test_every_float_param_of_every_plugin_refuses_nan_and_infinity(
    registry: PluginRegistry,
) -> None:
    """Programmatic params (not only manifests) refuse non-finite numbers, field by field."""
    from decimal import Decimal
    from typing import get_args

    from pydantic import BaseModel

    from quoteforge.exchanges.paper import PaperParams
    from quoteforge.manifest import Duration, Manifest

    def leaves(annotation: object) -> list[object]:
        args = get_args(annotation)
        return [leaf for arg in args for leaf in leaves(arg)] if args else [annotation]

    seen: set[type] = set()
    checked = 0

    def check(model: type[BaseModel]) -> None:
        nonlocal checked
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            kinds = leaves(info.annotation)
            for kind in kinds:
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    check(kind)
            numeric = [k for k in kinds if k in (float, Decimal, Duration)]
            if not numeric:
                continue
            for bad in (math.nan, math.inf, -math.inf):
                value: object = bad
                if "tuple" in str(info.annotation):
                    value = (bad, bad)
                elif "dict" in str(info.annotation):
                    value = {"x": bad}
                elif "list" in str(info.annotation):
                    value = [bad]
                with pytest.raises(ValidationError) as caught:
                    model.model_validate({name: value})
                mine = [e for e in caught.value.errors() if e["loc"][:1] == (name,)]
                assert mine, f"{model.__name__}.{name} accepted {value!r}"
            checked += 1

    check(Manifest)
    check(PaperParams)
    for kind in ("exchange", "strategy", "risk", "execution", "bus", "journal", "alert"):
        for reg in registry.types(kind).values():
            check(reg.params)
    assert checked > 150  # every numeric field of the built-in plugins


@pytest.mark.parametrize("name", ["../../../x", "/abs", "a/b", ".hidden", "-flag", "x" * 65, ""])
def test_run_names_are_safe_folder_names(name: str, registry: PluginRegistry) -> None:
    msg = refused(GOOD.replace("name: t", f"name: {name!r}"), registry)
    assert "m.yaml:2: run.name: Value error, a run name may hold letters, digits" in msg


def test_a_good_run_name_is_kept(registry: PluginRegistry) -> None:
    loaded = load(GOOD.replace("name: t", "name: btc-mm_v2.1"), registry)
    assert loaded.manifest.run.name == "btc-mm_v2.1"


@pytest.mark.parametrize("interval", ["0", "0s", "0ms", "0.5ms", "-1s"])
def test_sample_interval_below_a_millisecond_is_refused(
    interval: str, registry: PluginRegistry
) -> None:
    msg = refused(GOOD.replace("seed: 3", f"seed: 3\n  sample_interval: {interval}"), registry)
    assert "m.yaml:5: run.sample_interval:" in msg
    assert "greater than or equal to 0.001" in msg or "expected a duration" in msg


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("9" * 400 + "s", "finite number of seconds"),
        (10**400, "at most 10 years"),
        ("3651d", "at most 10 years"),
        (float("nan"), "finite number of seconds"),
        ("-1s", "expected a duration"),
    ],
)
def test_parse_duration_refuses_what_no_clock_can_hold(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_duration(value)


def test_rates_steps_and_grids_a_sim_cannot_run_are_refused(registry: PluginRegistry) -> None:
    sim = "          initial_price: 100\n"
    cases = [
        ("          flow: {arrival_rate: 1e9}\n", "less than or equal to 10000"),
        ("          process: {step: 0s}\n", "process.step: Input should be greater than or"),
        ("          tick_size: '1000'\n", "it must be 1 to 1e15 ticks"),
        ("          liquidity: {levels: 100000}\n", "less than or equal to 1000"),
        ("          outages: [{at: 5s, duration: 0s}]\n", "outages.0.duration"),
        ("          flow: {arrival_rate: 1.0e-300}\n", "would wait more than 11 days"),
        ("          flow: {reach: 1.0e+300}\n", "flow.reach 1e+300 is more than 1e15 ticks"),
        ("          process: {sigma: 5}\n", "less than or equal to 1"),
    ]
    for extra, match in cases:
        assert match in refused(GOOD.replace(sim, sim + extra), registry), extra
    # Found by sweeping the examples' numbers to 1e300 and 1e-300: each crashed a sim.
    params = "      spread_bps: 10\n"
    for extra, match in [
        ("      spread_bps: 1.0e+300\n", "spread_bps: Input should be less than or equal to 1"),
        ("      inventory_skew_bps: 1.0e+300\n", "inventory_skew_bps: Input should be less"),
    ]:
        assert match in refused(GOOD.replace(params, extra), registry), extra
    limit = ["execution.type=minimal_diff", "execution.params.max_orders_per_second=1e308"]
    msg = refused(GOOD, registry, overrides=limit)
    assert "max_orders_per_second (from --set): Input should be less than or equal to" in msg


def test_a_wrapped_strategys_params_are_checked_at_validate_time(
    registry: PluginRegistry,
) -> None:
    wrapped = GOOD.replace(
        "    type: pure_market_making\n", "    type: volatility_guard\n"
    ).replace(
        "    params:\n      order_size: 0.1\n      spread_bps: 10\n",
        "    params:\n"
        "      strategy: pure_market_making\n"
        "      guard: {threshold: 0.01}\n"
        "      params:\n"
        "        order_size: 0.1\n"
        "        spread_bps: -10\n"
        "        spred: 1\n",
    )
    msg = refused(wrapped, registry)
    assert "m.yaml:22: strategies.mm.params.params.spread_bps: Input should be greater" in msg
    assert (
        "m.yaml:23: strategies.mm.params.params.spred: unknown key "
        "(did you mean 'spread_bps'?); pure_market_making takes:" in msg
    )
    msg = refused(wrapped.replace("strategy: pure_market_making", "strategy: nope"), registry)
    assert "strategies.mm.params.strategy: unknown strategy type 'nope'" in msg
    fixed = wrapped.replace("spread_bps: -10", "spread_bps: 10").replace("        spred: 1\n", "")
    params = load(fixed, registry).params_of("strategies", "mm")
    assert isinstance(params, VolatilityGuardedParams)
    assert params.strategy == "pure_market_making"


def test_rules_that_need_the_rest_of_the_manifest_are_checked_at_validate_time(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    monkeypatch.chdir(examples.parent)
    one_leg = (
        (examples / "cross_venue_taker.yaml")
        .read_text()
        .replace('symbols: [BTC/USDT, "venue_b:BTC/USDT"]', 'symbols: ["venue_b:BTC/USDT"]')
    )
    msg = refused(one_leg, registry)
    assert "strategies.xv.symbols: cross_venue_taker needs at least two legs" in msg
    backtest = (examples / "backtest.yaml").read_text()
    no_data = "\n".join(line for line in backtest.splitlines() if "data:" not in line)
    msg = refused(no_data, registry)
    assert "exchanges.binance.params.data: no recording given" in msg


def test_overrides_are_bounded_like_the_file(registry: PluginRegistry) -> None:
    msg = refused(GOOD, registry, overrides=["x." * 3000 + "y=1"])
    assert "--set: " in msg and "a key path has at most 64 parts" in msg
    msg = refused(GOOD, registry, overrides=["run.name=" + "[" * 3000])
    assert "nested more than 64 levels deep" in msg and "(3000 characters)" in msg
    msg = refused(GOOD, registry, overrides=["run.duration=.inf"])
    assert "run.duration (from --set): inf is not a finite number" in msg


def test_every_problem_is_reported_in_one_pass_with_suggestions(registry: PluginRegistry) -> None:
    text = (
        GOOD.replace("duration: 2m", "duration: 2 minutes").replace(
            "spread_bps: 10", "spred_bps: 10"
        )
        + "risk:\n  pos:\n    type: max_positon\n    params: {max_position: 1}\n"
    )
    lines = refused(text, registry).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("m.yaml:3: run.duration: Value error, expected a duration like")
    assert lines[1].startswith(
        "m.yaml:19: strategies.mm.params.spred_bps: unknown key (did you mean 'spread_bps'?); "
        "pure_market_making takes: "
    )
    assert lines[2].startswith(
        "m.yaml:22: risk.pos.type: unknown risk type 'max_positon' "
        "(did you mean 'max_position'?); installed: "
    )


def test_near_miss_keys_are_suggested_in_sections_and_nested_params(
    registry: PluginRegistry,
) -> None:
    text = GOOD.replace("  seed: 3\n", "  sed: 3\n").replace(
        "initial_price: 100", "initial_pric: 100"
    )
    lines = refused(text, registry).splitlines()
    assert lines[0].startswith(
        "m.yaml:4: run.sed: unknown key (did you mean 'seed'?); expected one of: "
    )
    assert lines[1] == (
        "m.yaml:10: exchanges.sim.params.markets.BTC/USDT.initial_price: required value is missing"
    )
    assert lines[2].startswith(
        "m.yaml:11: exchanges.sim.params.markets.BTC/USDT.initial_pric: unknown key "
        "(did you mean 'initial_price'?); expected one of: "
    )
    assert len(lines) == 3, lines
    # A key far from every known one is not given a guess.
    msg = refused(GOOD.replace("  seed: 3\n", "  zzzzqq: 3\n"), registry)
    assert "run.zzzzqq: unknown key; expected one of: " in msg


def test_a_value_taken_out_reports_once_without_follow_on_errors(
    registry: PluginRegistry,
) -> None:
    # The exchange's type is unusable: the strategy on it is not also told the exchange
    # is missing, and the strategy param typo of another section is still found.
    text = GOOD.replace("    type: sim\n", "    type: [sim]\n").replace(
        "  seed: 3\n", "  seed: -3\n"
    )
    lines = refused(text, registry).splitlines()
    assert lines == [
        "m.yaml:4: run.seed: Input should be greater than or equal to 0; got -3",
        "m.yaml:7: exchanges.sim.type: Input should be a valid string",
    ]
    # ... and the sections that are fine are still checked.
    text = text.replace("symbols: BTC/USDT", "symbols: {BTC: USDT}") + (
        "risk:\n  pos: {type: max_positon}\n"
    )
    lines = refused(text, registry).splitlines()
    assert len(lines) == 4, lines
    assert lines[2] == "m.yaml:16: strategies.mm.symbols: Input should be a valid list"
    assert lines[3].startswith("m.yaml:21: risk.pos.type: unknown risk type 'max_positon' (did")
    # A strategy without its exchange is reported once, not as a strategy on no market.
    text = GOOD.replace("    exchange: sim\n", "")
    lines = refused(text, registry).splitlines()
    assert lines == ["m.yaml:13: strategies.mm.exchange: required value is missing"]
    # NaN anywhere is refused and the rest of the manifest is still checked.
    text = GOOD.replace("order_size: 0.1", "order_size: .nan").replace(
        "type: pure_market_making", "type: pure_market_makin"
    )
    lines = refused(text, registry).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("m.yaml:18: strategies.mm.params.order_size: nan is not a finite")
    assert lines[1].startswith("m.yaml:14: strategies.mm.type: unknown strategy type")


def test_validate_prints_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quoteforge.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD.replace("duration: 2m", "duration: 2 minutes").replace("spread_bps", "spred_bps")
        + "risk:\n  pos: {type: max_positon}\n"
    )
    assert main(["validate", str(bad)]) != 0
    err = capsys.readouterr().err
    assert f"{bad}:3: run.duration: " in err
    assert f"{bad}:19: strategies.mm.params.spred_bps: unknown key (did you mean" in err
    assert f"{bad}:21: risk.pos.type: unknown risk type 'max_positon' (did you mean" in err


def test_a_manifest_without_exchanges_still_has_its_other_sections_checked(
    registry: PluginRegistry,
) -> None:
    text = "run: {name: t}\nrisk:\n  pos: {type: max_positon}\n"
    lines = refused(text, registry).splitlines()
    assert lines[0] == "m.yaml: exchanges (default): required value is missing"
    assert lines[1] == "m.yaml: strategies (default): required value is missing"
    assert lines[2].startswith("m.yaml:3: risk.pos.type: unknown risk type 'max_positon' (did")
    assert len(lines) == 3, lines
