"""`quoteforge manifest schema` is exact: every example validates against it, and an
editor using it flags what the loader refuses (a misspelled plugin param, an unknown
plugin type, an unknown key) at the path of the mistake. Checked with ``jsonschema``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from quoteforge.cli import main
from quoteforge.manifest import ManifestError, load_manifest, manifest_schema
from quoteforge.registry import PluginRegistry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/distributed/*.yaml")])
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    from quoteforge.registry import load_registry

    schema = manifest_schema(load_registry())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[tuple[list[Any], str]]:
    return [(list(e.absolute_path), e.message) for e in validator.iter_errors(data)]


def quickstart() -> dict[str, Any]:
    data = yaml.safe_load(QUICKSTART.read_text())
    assert isinstance(data, dict)
    return data


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) >= 13
    assert any(p.parent.name == "distributed" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_example_validates(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    assert errors(validator, yaml.safe_load(path.read_text())) == []


def test_the_command_prints_the_schema(
    validator: jsonschema.Draft202012Validator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["manifest", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == validator.schema
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_symbols_may_be_one_string_or_a_list(validator: jsonschema.Draft202012Validator) -> None:
    data = quickstart()
    mm = data["strategies"]["mm"]
    for symbols in ("BTC/USDT", ["BTC/USDT", "ETH/USDT"], ["*"]):
        mm["symbols"] = symbols
        assert errors(validator, data) == []
    mm["symbols"] = 7
    assert [path for path, _ in errors(validator, data)] == [["strategies", "mm", "symbols"]]


def refused_by_both(data: dict[str, Any], registry: PluginRegistry) -> str:
    """The loader refuses ``data`` too; its message."""
    with pytest.raises(ManifestError) as info:
        load_manifest("m.yaml", registry, text=yaml.safe_dump(data))
    return str(info.value)


def test_a_misspelled_plugin_param_is_flagged_at_the_params(
    validator: jsonschema.Draft202012Validator, registry: PluginRegistry
) -> None:
    data = quickstart()
    params = data["strategies"]["mm"]["params"]
    params["spred_bps"] = params.pop("spread_bps")
    assert errors(validator, data) == [
        (
            ["strategies", "mm", "params"],
            "Additional properties are not allowed ('spred_bps' was unexpected)",
        )
    ]
    assert "strategies.mm.params.spred_bps: unknown key" in refused_by_both(data, registry)


def test_the_type_selects_the_params_schema(
    validator: jsonschema.Draft202012Validator,
) -> None:
    data = quickstart()
    data["risk"] = {"pos": {"type": "max_position", "params": {"max_position": 1.0}}}
    assert errors(validator, data) == []
    # The same params under another risk type are that type's unknown keys.
    data["risk"]["pos"]["type"] = "max_open_orders"
    found = errors(validator, data)
    assert found and all(path == ["risk", "pos", "params"] for path, _ in found)
    assert any("'max_position' was unexpected" in message for _, message in found)
    # A wrong value type inside a plugin's params is flagged at the value.
    data = quickstart()
    data["strategies"]["mm"]["params"]["spread_bps"] = "wide"
    assert [path for path, _ in errors(validator, data)] == [
        ["strategies", "mm", "params", "spread_bps"]
    ]


def test_nested_plugin_params_are_exact(validator: jsonschema.Draft202012Validator) -> None:
    data = quickstart()
    market = next(iter(data["exchanges"]["sim"]["params"]["markets"]))
    data["exchanges"]["sim"]["params"]["markets"][market]["initial_pric"] = 1.0
    paths = [path for path, _ in errors(validator, data)]
    assert ["exchanges", "sim", "params", "markets", market] in paths


def test_a_wrong_type_name_is_flagged_at_the_type(
    validator: jsonschema.Draft202012Validator, registry: PluginRegistry
) -> None:
    data = quickstart()
    data["strategies"]["mm"]["type"] = "pure_market_makin"
    found = errors(validator, data)
    assert [path for path, _ in found] == [["strategies", "mm", "type"]]
    assert found[0][1].startswith("'pure_market_makin' is not one of [")
    assert "'pure_market_making'" in found[0][1]
    assert "unknown strategy type 'pure_market_makin'" in refused_by_both(data, registry)
    # Sections holding one plugin are checked the same way.
    data = quickstart()
    data["journal"] = {"type": "sqlit"}
    assert [path for path, _ in errors(validator, data)] == [["journal", "type"]]


def test_an_unknown_top_level_key_is_flagged(
    validator: jsonschema.Draft202012Validator, registry: PluginRegistry
) -> None:
    data = quickstart()
    data["risks"] = copy.deepcopy(data.get("risk", {}))
    assert errors(validator, data) == [
        ([], "Additional properties are not allowed ('risks' was unexpected)")
    ]
    assert "risks: unknown key (did you mean 'risk'?)" in refused_by_both(data, registry)


def test_a_bad_duration_is_flagged(validator: jsonschema.Draft202012Validator) -> None:
    data = quickstart()
    for good in (90, 1.5, "90s", "15m", "250ms", "1.5h"):
        data["run"]["duration"] = good
        assert errors(validator, data) == []
    data["run"]["duration"] = "5 minutes"
    assert [path for path, _ in errors(validator, data)] == [["run", "duration"]]


def test_the_paper_section_has_the_paper_wrappers_schema(
    validator: jsonschema.Draft202012Validator, registry: PluginRegistry
) -> None:
    data = quickstart()
    data["paper"] = {"no_such_setting": 1}
    assert [path for path, _ in errors(validator, data)] == [["paper"]]
    assert "paper.no_such_setting: unknown key" in refused_by_both(data, registry)


def test_every_registered_plugin_is_indexed(validator: jsonschema.Draft202012Validator) -> None:
    from quoteforge.registry import KINDS, load_registry

    index = validator.schema["x-quoteforge-plugin-params"]
    registry = load_registry()
    assert set(index) == {f"{k}:{n}" for k in KINDS for n in registry.types(k)}
    pmm = index["strategy:pure_market_making"]
    assert pmm["additionalProperties"] is False
    assert pmm["properties"]["spread_bps"]["description"]
