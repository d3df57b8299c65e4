"""Plugin commands: ``quoteforge_register_commands``, dispatch by ``quoteforge.cli.main``,
collisions, help, unknown commands, ``run --node`` through the distributed plugin's
``node`` command and the end-of-run report through ``quoteforge_write_report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import SecureBroker
from loguru import logger

import quoteforge
from quoteforge import cli
from quoteforge.cli import main
from quoteforge.plugins.plugins_cli import plugin_rows
from quoteforge.registry import KERNEL_COMMANDS, PluginRegistry

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SPLIT_EXAMPLE = ROOT / "examples" / "distributed" / "sim_nodes.yaml"


def fresh_registry(monkeypatch: pytest.MonkeyPatch, *, block: str = "") -> PluginRegistry:
    """A registry of its own (the process-wide one stays untouched) that ``main`` uses."""
    monkeypatch.setenv("QUOTEFORGE_BLOCK_PLUGINS", block)
    registry = PluginRegistry()
    registry.load_entry_points()
    monkeypatch.setattr(cli, "load_registry", lambda **_: registry)
    return registry


def command_plugin(*commands: str, calls: list[list[str]] | None = None) -> Any:
    """A plugin object registering ``commands``; each records its argv and returns 7."""

    def make(name: str) -> Any:
        def command(argv: list[str]) -> int:
            """The first line is the help when none is given."""
            if calls is not None:
                calls.append([name, *argv])
            return 7

        return command

    class Plugin:
        @staticmethod
        @quoteforge.hookimpl
        def quoteforge_register_commands(register: Any) -> None:
            for name in commands:
                register(name, make(name), help=f"{name}: a third-party command")

    return Plugin


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """The warnings logged about reports (not those of plugins other helpers load)."""
    found: list[str] = []

    def keep(message: Any) -> None:
        if message.record["message"].startswith("report"):
            found.append(message.record["message"])

    sink = logger.add(keep, level="WARNING")
    yield found
    logger.remove(sink)


def test_a_third_party_command_is_called_with_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = fresh_registry(monkeypatch)
    calls: list[list[str]] = []
    record = registry.register_module(command_plugin("hello", calls=calls), "qf_hello")
    assert record.loaded, record.error
    assert ("command", "hello") in record.provides
    assert main(["hello", "world", "--loud"]) == 7
    assert calls == [["hello", "world", "--loud"]]


def test_builtin_commands_come_from_their_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = fresh_registry(monkeypatch)
    plugins = {name: command.plugin for name, command in registry.commands.items()}
    assert plugins == {
        "ccxt-venues": "ccxt",
        "dashboard": "report",
        "data": "data_import",
        "flatten": "binance_usdm",
        "kill": "run_control_cli",
        "latency": "latency_probe",
        "node": "distributed",
        "optimize": "optimize",
        "plugins": "plugins_cli",
        "record": "record",
        "report": "report",
        "reset": "run_control_cli",
        "sweep": "sweep",
    }
    assert not set(registry.commands) & set(KERNEL_COMMANDS)


def test_a_kernel_command_cannot_be_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = fresh_registry(monkeypatch)
    record = registry.register_module(command_plugin("run"), "qf_takeover")
    assert not record.loaded
    assert "command 'run' from plugin 'qf_takeover' collides with the kernel's own" in (
        record.error
    )
    assert "run" not in registry.commands


def test_a_command_name_taken_by_another_plugin_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = fresh_registry(monkeypatch)
    calls: list[list[str]] = []
    assert registry.register_module(command_plugin("hello", calls=calls), "qf_first").loaded
    second = registry.register_module(command_plugin("extra", "hello"), "qf_second")
    assert not second.loaded
    assert "command 'hello' from plugin 'qf_second' is already registered by plugin " in (
        second.error
    )
    assert "'qf_first'" in second.error
    # Nothing of the refused plugin stays: not even the command it registered first.
    assert "extra" not in registry.commands
    assert registry.commands["hello"].plugin == "qf_first"
    assert main(["hello"]) == 7 and calls == [["hello"]]
    # A built-in command's name is taken the same way (built-ins load first).
    third = registry.register_module(command_plugin("report"), "qf_third")
    assert "already registered by plugin 'report'" in third.error
    # The refusal is listed with the other plugins.
    rows = {r["name"]: r for r in plugin_rows(registry)}
    assert rows["qf_second"]["kind"] == "?"
    assert "already registered by plugin 'qf_first'" in rows["qf_second"]["status"]


def test_command_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = fresh_registry(monkeypatch)
    record = registry.register_module(command_plugin("Hello World"), "qf_bad_name")
    assert not record.loaded and "must be lower-case letters, digits and dashes" in record.error


def test_help_lists_plugin_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = fresh_registry(monkeypatch)
    registry.register_module(command_plugin("hello"), "qf_hello")
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in (*KERNEL_COMMANDS, "report", "sweep", "node", "data", "latency", "record"):
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name
    assert "hello: a third-party command" in out


def test_unknown_command_says_what_there_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = fresh_registry(monkeypatch)
    registry.register_module(command_plugin("hello"), "qf_hello")

    class Broken:
        @staticmethod
        @quoteforge.hookimpl
        def quoteforge_register_commands(register: Any) -> None:
            raise RuntimeError("no config file")

    registry.register_module(Broken, "qf_broken_cmds")
    with pytest.raises(SystemExit) as exited:
        main(["helo"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "quoteforge: error: unknown command 'helo' (choose from run, validate," in err
    assert "hello" in err and "sweep" in err
    assert "qf_broken_cmds (registration failed: RuntimeError: no config file)" in err


def test_plugins_lists_commands_not_bare_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = fresh_registry(monkeypatch)

    class NeedsAModule:
        @staticmethod
        @quoteforge.hookimpl
        def quoteforge_register_commands(register: Any) -> None:
            register("fancy", lambda argv: 0, help="fancy", requires=("qf_not_installed_mod",))

    registry.register_module(command_plugin("hello"), "qf_hello")
    registry.register_module(NeedsAModule, "qf_fancy")
    rows = {(r["kind"], r["name"]): r for r in plugin_rows(registry)}
    assert rows[("command", "hello")]["plugin"] == "qf_hello"
    assert rows[("command", "hello")]["status"] == "ok"
    assert rows[("command", "hello")]["description"] == "hello: a third-party command"
    assert rows[("command", "fancy")]["status"] == "needs: pip install qf_not_installed_mod"
    assert rows[("command", "report")]["plugin"] == "report"
    hooks_only = {name for kind, name in rows if kind == "hooks"}
    assert not hooks_only & {"qf_hello", "report", "sweep", "distributed", "record"}


def test_run_node_goes_to_the_node_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry = fresh_registry(monkeypatch, block="distributed")
    calls: list[list[str]] = []
    registry.register_module(command_plugin("node", calls=calls), "qf_nodes")
    out = tmp_path / "node"
    argv = ["run", str(QUICKSTART), "--node", "execution", "--set", "run.duration=5s"]
    assert main([*argv, "--out", str(out), "--log-level", "WARNING"]) == 7
    assert calls == [
        [
            "node",
            "execution",
            str(QUICKSTART),
            "--log-level",
            "WARNING",
            "--set",
            "run.duration=5s",
            "--out",
            str(out),
        ]
    ]


def test_run_node_without_the_distributed_plugin_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh_registry(monkeypatch, block="distributed")
    assert main(["run", str(QUICKSTART), "--node", "strategy"]) == 2
    err = capsys.readouterr().err
    assert "no plugin provides the 'node' command" in err
    assert "distributed plugin (quoteforge.plugins.distributed)" in err


@pytest.mark.slow
def test_run_node_runs_a_node_of_the_documented_example(tmp_path: Path) -> None:
    """``quoteforge run MANIFEST --node ROLE`` as the README and examples/distributed show
    it, in its own process against a broker with passwords, TLS and the shipped ACL."""
    broker = SecureBroker(tmp_path / "broker")
    broker.start()
    out = tmp_path / "monitor"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "quoteforge.cli",
                "run",
                str(SPLIT_EXAMPLE),
                "--node",
                "monitor",
                "--set",
                f"bus.params.port={broker.port}",
                "--set",
                "run.duration=2s",
                "--set",
                "nodes.clock=wall",
                "--set",
                "run.name=cli-node",
                "--out",
                str(out),
            ],
            env={**os.environ, **broker.env("monitor")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        broker.kill()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "monitor node stopped: duration reached" in done.stderr
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert (info["role"], info["name"], info["stop_reason"]) == (
        "monitor",
        "cli-node",
        "duration reached",
    )


def test_node_command_refuses_an_unknown_role_and_a_bad_manifest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh_registry(monkeypatch)
    assert main(["node", "trader", str(QUICKSTART)]) == 2
    assert "invalid choice: 'trader'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("- run\n")
    assert main(["run", str(bad), "--node", "strategy", "--out", str(tmp_path / "r")]) == 2
    assert "manifest refused:" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_end_of_run_report_goes_through_the_hook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, messages: list[str]
) -> None:
    registry = fresh_registry(monkeypatch, block="report")
    cli._write_report(registry, tmp_path, True, False)
    assert messages == [
        "report not written (no plugin implements quoteforge_write_report); "
        'install it with: pip install "quoteforge[report]"'
    ]
    cli._write_report(registry, tmp_path, False, False)  # nothing asked: nothing said
    assert len(messages) == 1

    asked: list[tuple[Path, bool, bool]] = []

    class Writer:
        @staticmethod
        @quoteforge.hookimpl
        def quoteforge_write_report(run_dir: Path, html: bool, png: bool) -> list[Path]:
            asked.append((run_dir, html, png))
            if png:
                raise OSError("disk full")
            return [run_dir / "report.html"]

    registry.register_module(Writer, "qf_writer")
    cli._write_report(registry, tmp_path, True, False)
    assert asked == [(tmp_path, True, False)]
    # A failing report is logged; the run (and its exit code) is not lost.
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        cli._write_report(registry, tmp_path, False, True)
    finally:
        logger.remove(sink)
    assert errors == ["report failed: disk full; the run folder is intact"]


def test_report_plugin_names_the_extra_when_it_cannot_draw(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, messages: list[str]
) -> None:
    from quoteforge.plugins import report

    monkeypatch.setitem(sys.modules, "quoteforge.plugins.report.render", None)
    assert report.quoteforge_write_report(run_dir=tmp_path, html=True, png=True) == []
    assert len(messages) == 1
    assert messages[0].startswith("report not written (")
    assert messages[0].endswith('install it with: pip install "quoteforge[report]"')


def test_the_kernel_cli_imports_no_plugin() -> None:
    """Importing the command line and listing its help loads plugins through the registry
    (entry points), never by an import written in the kernel."""
    code = (
        "import sys, quoteforge.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('quoteforge.plugins', "
        "'quoteforge.exchanges', 'quoteforge.strategies'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
