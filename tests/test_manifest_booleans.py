"""A boolean where a number is expected is refused, not read as 1 or 0: YAML reads ``on``,
``yes`` and ``true`` as True, so ``order_size: on`` would quote a whole unit."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from quoteforge.cli import main
from quoteforge.manifest import ManifestError, RunSpec, load_manifest
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMakingParams
from quoteforge.strategy import StrategyParams

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
      levels: 2
"""
HINT = "YAML reads yes/no, on/off as booleans"


def refused(text: str, registry: PluginRegistry, overrides: list[str] | None = None) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest("m.yaml", registry, text=text, overrides=overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "shown"),
    [
        ("order_size: 0.1", "order_size: on", 18, "strategies.mm.params.order_size", "True"),
        ("order_size: 0.1", "order_size: yes", 18, "strategies.mm.params.order_size", "True"),
        ("spread_bps: 10", "spread_bps: true", 19, "strategies.mm.params.spread_bps", "True"),
        ("levels: 2", "levels: true", 20, "strategies.mm.params.levels", "True"),
        ("spread_bps: 10", "spread_bps: off", 19, "strategies.mm.params.spread_bps", "False"),
        ("seed: 3", "seed: true", 4, "run.seed", "True"),
    ],
)
def test_a_boolean_for_a_number_is_refused_with_its_line(
    old: str, new: str, line: int, key: str, shown: str, registry: PluginRegistry
) -> None:
    msg = refused(GOOD.replace(old, new), registry)
    assert msg == f"m.yaml:{line}: {key}: expected a number, got the boolean {shown}; {HINT}"


def test_every_boolean_for_a_number_is_reported_in_one_pass(registry: PluginRegistry) -> None:
    text = GOOD.replace("order_size: 0.1", "order_size: on").replace("seed: 3", "seed: yes")
    lines = refused(text.replace("levels: 2", "levels: true"), registry).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "run.seed",
        "strategies.mm.params.levels",
        "strategies.mm.params.order_size",
    ]


def test_a_boolean_from_set_is_refused_too(registry: PluginRegistry) -> None:
    msg = refused(GOOD, registry, overrides=["strategies.mm.params.order_size=on"])
    key = "strategies.mm.params.order_size (from --set)"
    assert f"{key}: expected a number, got the boolean True; {HINT}" in msg


def test_boolean_fields_still_take_yaml_booleans(registry: PluginRegistry) -> None:
    text = GOOD.replace("levels: 2", "levels: 2\n      hanging_orders: on\n      post_only: no")
    text = text.replace("seed: 3", "seed: 3\n  watch_manifest: off")
    loaded = load_manifest("m.yaml", registry, text=text)
    params = loaded.params_of("strategies", "mm")
    assert isinstance(params, PureMarketMakingParams)
    assert params.hanging_orders is True and params.post_only is False
    assert params.order_size == 0.1 and params.levels == 2
    assert loaded.manifest.run.watch_manifest is False


def test_validate_prints_the_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(GOOD.replace("order_size: 0.1", "order_size: on"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    where = "m.yaml:18: strategies.mm.params.order_size"
    assert f"{where}: expected a number, got the boolean True; {HINT}" in err


def _is_number(annotation: object) -> bool:
    kinds = [k for k in get_args(annotation) or (annotation,) if k is not type(None)]
    return bool(kinds) and all(
        isinstance(k, type) and issubclass(k, int | float | Decimal) and k is not bool
        for k in kinds
    )


def test_every_number_field_of_every_strategy_and_of_run_refuses_booleans(
    registry: PluginRegistry,
) -> None:
    """Programmatic params too, field by field: the base classes refuse, not each field."""
    models = [reg.params for reg in registry.types("strategy").values()] + [RunSpec]
    checked = 0
    for model in models:
        assert issubclass(model, StrategyParams) or model is RunSpec
        for name, info in model.model_fields.items():
            if not _is_number(info.annotation):
                continue
            for value in (True, False):
                with pytest.raises(ValidationError) as caught:
                    model.model_validate({name: value})
                mine = [e for e in caught.value.errors() if e["loc"] == (name,)]
                assert [e["type"] for e in mine] == ["number_from_boolean"], (model, name)
            checked += 1
    assert checked > 60  # the numbers of the built-in strategies and of run
