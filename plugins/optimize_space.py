"""The search space of ``quoteforge optimize``: a YAML file naming manifest keys and the
values each may take, validated before any trial runs.

```yaml
params:
  strategies.mm.params.spread_bps: {type: float, low: 0.5, high: 8, log: true}
  strategies.mm.params.levels: {type: int, low: 1, high: 3}
  strategies.mm.params.order_size: {type: float, low: 0.005, high: 0.02, step: 0.005}
  strategies.mm.params.variant: {type: categorical, choices: [inventory, symmetric]}
```

Each key is a manifest path as for ``quoteforge run --set``; the manifest must accept
the range's ends (and every choice), so an unknown key or a value the strategy refuses
is reported with the manifest's own message ("unknown key (did you mean ...)").
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.registry import PluginRegistry

__all__ = ["Param", "SpaceError", "check_against_manifest", "load_space", "overrides_for"]

_TYPES = ("float", "int", "categorical")
_FIELDS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


class SpaceError(Exception):
    """A space file that cannot be used; the message names the parameter and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched manifest key."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def ends(self) -> list[Any]:
        """The values the manifest must accept: both ends of a range, every choice, and
        for a float range a drawn-like value inside it (whole-number ends alone would let
        a float range through on an integer key, and every trial would then fail)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "float":
            low, high = float(self.low or 0), float(self.high or 0)
            inside = low + float(self.step) if self.step else low + (high - low) * 0.382
            return [self.low, self.high, inside]
        return [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value from an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key,
                int(self.low or 0),
                int(self.high or 0),
                step=int(self.step or 1),
                log=self.log,
            )
        return trial.suggest_float(
            self.key, float(self.low or 0), float(self.high or 0), step=self.step, log=self.log
        )


def _suggest_name(word: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(key: str, name: str, value: Any, kind: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpaceError(f"{key}: {name} must be a number, got {value!r}")
    if kind == "int" and not isinstance(value, int):
        raise SpaceError(f"{key}: {name} of an int parameter must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise SpaceError(f"{key}: {name} must be finite, got {value!r}")
    return value


def _param(key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise SpaceError(
            f"{key}: expected a mapping like {{type: float, low: 1, high: 5}}, got {spec!r}"
        )
    kind = spec.get("type")
    if kind not in _TYPES:
        hint = _suggest_name(str(kind), _TYPES) if kind is not None else ""
        raise SpaceError(f"{key}: type must be one of {', '.join(_TYPES)}, got {kind!r}{hint}")
    for field in spec:
        if field not in _FIELDS[kind]:
            hint = _suggest_name(str(field), _FIELDS[kind])
            raise SpaceError(
                f"{key}: unknown field {field!r}{hint}; a {kind} parameter takes "
                f"{', '.join(_FIELDS[kind])}"
            )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{key}: choices must be a non-empty list, e.g. choices: [a, b]")
        if any(isinstance(c, dict | list) for c in choices):
            raise SpaceError(f"{key}: choices must be plain values (numbers, text, true/false)")
        if len({repr(c) for c in choices}) != len(choices):
            raise SpaceError(f"{key}: a choice is listed twice")
        return Param(key, kind, choices=tuple(choices))
    for name in ("low", "high"):
        if name not in spec:
            raise SpaceError(f"{key}: {name} is missing; a {kind} range needs low and high")
    low = _number(key, "low", spec["low"], kind)
    high = _number(key, "high", spec["high"], kind)
    if not low < high:
        raise SpaceError(f"{key}: bad range: low ({low}) must be below high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{key}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{key}: bad range: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(key, "step", step, kind)
        if step <= 0:
            raise SpaceError(f"{key}: step must be > 0, got {step}")
        if log:
            raise SpaceError(f"{key}: give step or log, not both (Optuna samples neither so)")
        if step > high - low:
            raise SpaceError(f"{key}: step {step} is wider than the range {low}..{high}")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def load_space(path: Path) -> list[Param]:
    """Read and check a space file (format only; see :func:`check_against_manifest`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "params" not in data:
        raise SpaceError(
            f"{path}: a space file is a mapping with 'params:' (manifest key -> range); "
            "see examples/optimize_space.yaml"
        )
    extra = [k for k in data if k != "params"]
    if extra:
        hint = _suggest_name(str(extra[0]), ("params",))
        raise SpaceError(f"{path}: unknown top-level key {extra[0]!r}{hint}; only 'params' is read")
    params = data["params"]
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{path}: params must map at least one manifest key to a range")
    out = []
    for key, spec in params.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise SpaceError(f"{path}: {key!r} is not a dotted manifest path like run.seed")
        try:
            out.append(_param(key, spec))
        except SpaceError as exc:
            raise SpaceError(f"{path}: {exc}") from None
    return out


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style='"').strip()
    return str(value)


def overrides_for(values: dict[str, Any]) -> list[str]:
    """``--set`` style overrides for the chosen values."""
    return [f"{k}={_yaml_value(v)}" for k, v in values.items()]


def check_against_manifest(
    space: list[Param],
    manifest: Path,
    registry: PluginRegistry,
    *,
    text: str,
    fixed: list[str],
) -> None:
    """Load the manifest with each parameter at each end of its range (each choice): a
    key the manifest does not have, or a value its plugin refuses, is an error now."""
    problems: list[str] = []
    for param in space:
        for value in param.ends():
            overrides = fixed + overrides_for({param.key: value})
            try:
                load_manifest(manifest, registry, overrides=overrides, text=text)
            except ManifestError as exc:
                for line in str(exc).splitlines():
                    line = line.replace(f"{manifest}:", "").strip()
                    if line and line not in problems:
                        problems.append(f"{line} [at {param.key}={value!r}]")
                break
    if problems:
        raise SpaceError(
            f"{manifest}: the search space does not fit the manifest, nothing was run:\n  "
            + "\n  ".join(problems)
        )
