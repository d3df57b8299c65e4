"""The learning example in a short form: a linear policy trained by the cross-entropy
method (numpy only) beats the fixed-spread baseline on seeds it never trained on."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from quoteforge.gym.cem import FixedPolicy, LinearPolicy, train_cem

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gym_cem.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gym_cem_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trained_policy_beats_the_fixed_spread_on_held_out_seeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 4 iterations x 8 candidates x 2 training seeds of 40 one-second steps, then 5
    # held-out seeds each for the trained policy and the baseline: about 30 s of one core.
    # (Means over 5 held-out seeds; with the method's seeds 0, 1 and 2 the trained policy
    # led by 12.9, 15.7 and 9.4 in return.)
    argv = ["--iterations", "4", "--population", "8", "--seeds-per-iteration", "2"]
    argv += ["--episode-steps", "40", "--held-out", "5"]
    out = example().main(argv)
    trained, baseline = out["trained"], out["baseline"]
    assert len(trained) == len(baseline) == 5
    assert trained.mean() > baseline.mean(), (trained, baseline)
    # It still market-makes: it trades, and holds less inventory than the baseline.
    assert np.mean([e.fills for e in out["trained_runs"]]) > 10
    assert np.mean([e.max_position for e in out["trained_runs"]]) < np.mean(
        [e.max_position for e in out["baseline_runs"]]
    )
    printed = capsys.readouterr().out
    assert "fixed-spread baseline" in printed and "trained linear policy" in printed


def test_the_linear_policy_and_its_bad_parameters() -> None:
    action = np.array([0.25, -0.5], dtype=np.float32)
    params = LinearPolicy.of_action(action, 6)
    policy = LinearPolicy(params, 6, 2)
    np.testing.assert_allclose(policy(np.ones(6, dtype=np.float32)), action, atol=1e-6)
    np.testing.assert_array_equal(FixedPolicy(action)(np.zeros(6)), action)
    with pytest.raises(ValueError, match=r"14 parameters expected \(2x6 weights and 2 biases\)"):
        LinearPolicy(np.zeros(3), 6, 2)
    with pytest.raises(ValueError, match="population >= 2"):
        train_cem(None, population=1)  # type: ignore[arg-type]
