"""Plugin discovery through entry points: listing, broken and typo'd plugins, env
switches, and a third-party strategy installed with pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from quoteforge import hookimpl
from quoteforge.cli import main
from quoteforge.plugins.plugins_cli import plugin_rows
from quoteforge.registry import KINDS, PluginError, PluginRegistry, Register

ROOT = Path(__file__).resolve().parent.parent


def make_dist(
    where: Path, dist: str, entry: str, module: str, code: str, requires: list[str] | None = None
) -> None:
    """A minimal installed distribution: dist-info with entry points, plus its module."""
    info = where / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    meta = ["Metadata-Version: 2.1", f"Name: {dist}", "Version: 0.3"]
    meta += [f"Requires-Dist: {r}" for r in requires or []]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    (info / "entry_points.txt").write_text(f"[quoteforge]\n{entry} = {module}\n")
    (where / f"{module}.py").write_text(textwrap.dedent(code))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def fresh() -> PluginRegistry:
    reg = PluginRegistry()
    reg.load_entry_points()
    return reg


def test_builtins_are_discovered_through_entry_points(registry: PluginRegistry) -> None:
    assert "sim" in registry.types("exchange")
    assert "pure_market_making" in registry.types("strategy")
    assert {"max_position", "max_order_notional"} <= set(registry.types("risk"))
    assert "minimal_diff" in registry.types("execution")
    assert "sqlite" in registry.types("journal")
    rows = {(r["kind"], r["name"]): r for r in plugin_rows(registry)}
    sim = rows[("exchange", "sim")]
    assert sim["dist"] == "quoteforge" and sim["status"] == "ok" and sim["version"]


def test_broken_plugin_does_not_take_others_down(site: Path) -> None:
    make_dist(
        site, "qf-broken", "qf_broken", "qf_broken_mod", "raise RuntimeError('boom at import')\n"
    )
    reg = fresh()
    failed = {r.name: r for r in reg.failed_plugins()}
    assert "boom at import" in failed["qf_broken"].error
    assert "pure_market_making" in reg.types("strategy")  # everything else still loaded


def test_missing_optional_dependency_gives_the_pip_command(site: Path) -> None:
    make_dist(
        site,
        "qf-fancy",
        "fancy_venue",
        "qf_fancy_mod",
        "import qf_dependency_that_is_not_installed\n",
        requires=['qf-dependency-that-is-not-installed>=1; extra == "fancy"'],
    )
    reg = fresh()
    record = next(r for r in reg.failed_plugins() if r.name == "fancy_venue")
    assert record.install_hint == 'pip install "qf-fancy[fancy]"'
    with pytest.raises(PluginError, match=r'pip install "qf-fancy\[fancy\]"'):
        reg.get("exchange", "fancy_venue")


def test_registered_type_with_missing_requirement_is_listed_with_hint(site: Path) -> None:
    make_dist(
        site,
        "qf-lazy",
        "lazy",
        "qf_lazy_mod",
        """
        import quoteforge

        @quoteforge.hookimpl
        def quoteforge_register_exchanges(register):
            register("lazy_venue", object, requires=("qf_lazy_missing_sdk",))
        """,
        requires=['qf-lazy-missing-sdk; extra == "lazy"'],
    )
    reg = fresh()
    reg_entry = reg.types("exchange")["lazy_venue"]
    assert not reg_entry.loadable
    with pytest.raises(
        PluginError, match=r"exchange 'lazy_venue' needs: pip install \"qf-lazy\[lazy\]\""
    ):
        reg.get("exchange", "lazy_venue")


def test_typo_in_hook_name_is_rejected_with_suggestion(site: Path) -> None:
    make_dist(
        site,
        "qf-typo",
        "typo",
        "qf_typo_mod",
        """
        import quoteforge

        @quoteforge.hookimpl
        def quoteforge_register_strategy(register):
            pass
        """,
    )
    reg = fresh()
    record = next(r for r in reg.failed_plugins() if r.name == "typo")
    assert "unknown hook quoteforge_register_strategy" in record.error
    assert "did you mean quoteforge_register_strategies?" in record.error


def test_duplicate_type_name_is_refused(site: Path) -> None:
    make_dist(
        site,
        "qf-dup",
        "dup",
        "qf_dup_mod",
        """
        import quoteforge

        @quoteforge.hookimpl
        def quoteforge_register_strategies(register):
            register("pure_market_making", object)
        """,
    )
    reg = fresh()
    record = next(r for r in reg.failed_plugins() if r.name == "dup")
    assert "already registered by plugin 'pure_market_making'" in record.error


def test_env_switches(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(
        site, "qf-extra", "extra_one", "qf_extra_mod", "raise RuntimeError('should not load')\n"
    )
    monkeypatch.setenv("QUOTEFORGE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = fresh()
    assert all(r.name != "extra_one" for r in reg.records)
    assert "sim" in reg.types("exchange")  # built-ins still load
    monkeypatch.delenv("QUOTEFORGE_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("QUOTEFORGE_BLOCK_PLUGINS", "extra_one,pure_market_making")
    reg = fresh()
    assert all(r.name not in ("extra_one", "pure_market_making") for r in reg.records)
    with pytest.raises(PluginError, match="unknown strategy type 'pure_market_making'"):
        reg.get("strategy", "pure_market_making")


def test_plugins_command_lists_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    kinds = {(r["kind"], r["name"]) for r in rows}
    assert ("exchange", "sim") in kinds and ("strategy", "pure_market_making") in kinds


def test_third_party_strategy_installed_with_pip(tmp_path: Path) -> None:
    """pip-installs examples/third_party_strategy into a private target and runs a
    manifest that names its strategy."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "third_party_strategy"),
        ],
        check=True,
        capture_output=True,
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    )
    listed = subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["momentum_quoter"]["dist"] == "quoteforge-momentum"
    assert rows["momentum_quoter"]["status"] == "ok"
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quoteforge.cli",
            "run",
            str(ROOT / "examples" / "third_party_strategy" / "momentum.yaml"),
            "--out",
            str(out),
            "--set",
            "run.duration=60s",
            "--set",
            "report.html=false",
            "--set",
            "report.png=false",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("market,mid,spread")
    fills = int(summary[1].split(",")[summary[0].split(",").index("fill_count")])
    assert fills > 0


def test_observer_only_plugins_are_listed_with_their_hooks(registry: PluginRegistry) -> None:
    rows = {r["name"]: r for r in plugin_rows(registry)}
    metrics = rows["metrics_prometheus"]
    assert metrics["kind"] == "hooks"
    assert metrics["status"] == "ok"
    assert "quoteforge_run_started" in metrics["description"]


def test_install_hints_name_the_plugins_own_extra() -> None:
    """ccxt is in both the binance and kraken extras: each exchange asks for its own, and
    the metrics plugin's prometheus-client has an extra of its own (also in ``all``)."""
    from quoteforge.registry import install_hint

    assert install_hint("quoteforge", ("ccxt",), prefer="binance") == (
        'pip install "quoteforge[binance]"'
    )
    assert install_hint("quoteforge", ("ccxt",), prefer="kraken") == (
        'pip install "quoteforge[kraken]"'
    )
    assert install_hint("quoteforge", ("prometheus_client",), prefer="metrics_prometheus") == (
        'pip install "quoteforge[metrics]"'
    )


def naming_problems(registry: PluginRegistry) -> list[str]:
    """Where a built-in plugin breaks the naming rules of the README's "Plugin names"."""
    problems = []
    for record in registry.records:
        if record.dist != "quoteforge":
            continue
        parts = record.module.split(":")[0].split(".")
        # A package's registering module goes by the package's name.
        own = parts[-2] if parts[-1] in ("adapter", "plugin") else parts[-1]
        if record.name != own:
            problems.append(f"entry point {record.name!r} names module {record.module!r}")
        provides = [(kind, name) for kind, name in record.provides if kind in KINDS]
        if not record.loaded or not provides:
            continue  # hooks and commands only: named after the feature
        kinds = {kind for kind, _ in provides}
        types = {name for _, name in provides}
        if parts[1] in ("exchanges", "strategies"):
            if record.name not in types:
                problems.append(f"{record.name!r} registers {sorted(types)}, not its own name")
        elif len(kinds) != 1:
            problems.append(f"{record.name!r} registers several kinds: {sorted(kinds)}")
        else:
            (kind,) = kinds
            if len(types) == 1:
                wanted = f"{kind}_{next(iter(types))}"
                if record.name != wanted:
                    problems.append(f"{record.name!r} registers one {kind}: name it {wanted!r}")
            elif record.name != f"{kind}s" and not record.name.startswith(f"{kind}_"):
                problems.append(f"{record.name!r} registers {kind}s: name it {kind}s/{kind}_*")
    return problems


def test_builtin_plugins_follow_the_naming_rules(registry: PluginRegistry) -> None:
    """One name per thing (README, "Plugin names"): module, entry point and type agree."""
    problems = naming_problems(registry)
    assert not problems, "\n".join(problems)


def test_naming_rules_catch_a_plugin_named_apart_from_its_type() -> None:
    """The check itself: a journal module whose entry point and type disagree is caught,
    so the rule cannot pass by inspecting nothing."""
    reg = PluginRegistry()
    plugin = SimpleNamespace(quoteforge_register_journal_backends=_register_sqlite)
    record = reg.register_module(plugin, name="sqlite_journal")
    assert record.loaded and record.provides == [("journal", "sqlite")]
    record.dist = "quoteforge"
    record.module = "quoteforge.plugins.journal_sqlite"
    assert naming_problems(reg) == [
        "entry point 'sqlite_journal' names module 'quoteforge.plugins.journal_sqlite'",
        "'sqlite_journal' registers one journal: name it 'journal_sqlite'",
    ]


@hookimpl
def _register_sqlite(register: Register) -> None:
    register("sqlite", object)


def test_strategy_for_another_interface_version_is_refused(site: Path) -> None:
    """A strategy class declaring an older interface is refused at registration, and a
    manifest naming its type is told why (not "unknown strategy")."""
    make_dist(
        site,
        "qf-old",
        "qf_old",
        "qf_old_mod",
        """
        import quoteforge

        class OldQuoter(quoteforge.Strategy):
            interface_version = quoteforge.INTERFACE_VERSION - 1

        @quoteforge.hookimpl
        def quoteforge_register_strategies(register):
            register("old_quoter", OldQuoter)
        """,
    )
    reg = fresh()
    record = next(r for r in reg.failed_plugins() if r.name == "qf_old")
    assert "strategy 'old_quoter' refused" in record.error
    assert "written for strategy interface" in record.error
    with pytest.raises(PluginError, match=r"comes from plugin 'qf_old'.*old_quoter' refused"):
        reg.get("strategy", "old_quoter")
    assert "pure_market_making" in reg.types("strategy")  # the others still load
