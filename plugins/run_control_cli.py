"""``quoteforge kill RUN_DIR`` and ``quoteforge reset RUN_DIR``: an operator's hand on a
running run through files in its folder (``KILL``, ``RESET_BREAKERS``) and SIGUSR1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from quoteforge import hookimpl
from quoteforge.breakers import KINDS
from quoteforge.manifest import ManifestError, apply_overrides, split_market
from quoteforge.plugins.distributed.kill_latch import describe_latch
from quoteforge.registry import RegisterCommand
from quoteforge.runfiles import KILL_FILE, RESET_FILE

__all__ = ["kill_main", "reset_main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _run_info(run_dir: Path) -> dict[str, Any] | None:
    """run.json of ``run_dir``, or None (said on stderr) when it is not a run folder."""
    info_path = run_dir / "run.json"
    if not info_path.exists():
        print(f"{run_dir} is not a run folder (no run.json)", file=sys.stderr)
        return None
    info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
    return info


def kill_main(argv: list[str]) -> int:
    """``quoteforge kill RUN_DIR [--reason TEXT] [--reset]``."""
    p = argparse.ArgumentParser(prog="quoteforge kill")
    p.add_argument("run", type=Path, help="the run folder (runs/<name>-...)")
    p.add_argument("--reason", default="operator", help="recorded in the journal and alerts")
    p.add_argument(
        "--reset",
        action="store_true",
        help="clear the kill switch latched at the broker of a run split into nodes (a "
        "folder of any of its nodes), so that its nodes may start again",
    )
    args = p.parse_args(argv)
    run_dir: Path = args.run
    info = _run_info(run_dir)
    if info is None:
        return EXIT_USAGE
    if args.reset:
        return _reset_latch(run_dir, info)
    if info.get("finished_at"):
        print(f"run {info.get('run_id')} already finished ({info.get('stop_reason')})")
        return EXIT_OK
    (run_dir / KILL_FILE).write_text(args.reason + "\n", encoding="utf-8")
    pid = info.get("pid")
    signalled = False
    if isinstance(pid, int):
        try:
            os.kill(pid, signal.SIGUSR1)
            signalled = True
        except (ProcessLookupError, PermissionError):
            pass
    how = f"signalled pid {pid} and wrote {KILL_FILE}" if signalled else f"wrote {KILL_FILE}"
    print(f"kill switch sent to run {info.get('run_id')}: {how}")
    return EXIT_OK


def _reset_latch(run_dir: Path, info: dict[str, Any]) -> int:
    """``quoteforge kill RUN_DIR --reset``: clear a split run's latched kill switch."""
    role = info.get("role")
    if not role or role == "all":
        print(
            f"quoteforge kill --reset: run {info.get('run_id')} ran in one process, whose "
            "kill switch stops that process only: nothing is latched (the latch is a "
            "split run's, at its broker); start the run again",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from quoteforge.logs import configure_logging
    from quoteforge.plugins.distributed.nodes import clear_kill_latch
    from quoteforge.registry import load_registry

    configure_logging("ERROR")  # the outcome is said below, in one line

    try:
        cleared = asyncio.run(clear_kill_latch(run_dir, info, load_registry()))
    except ManifestError as exc:
        print(f"quoteforge kill --reset: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TimeoutError:
        print(
            f"quoteforge kill --reset: the broker of run {info.get('name')!r} did not take "
            "the reset: check that it is reachable (the folder's manifest and --set values "
            f"name it), that the {role} user's password and the bus key are in the "
            f"environment as for its node, and that the ACL lets the {role} user write "
            "state/kill (examples/distributed/mosquitto.acl)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if cleared is None:
        print(f"run {info.get('name')!r}: no kill switch was latched; nothing to clear")
    else:
        print(
            f"run {info.get('name')!r}: kill switch cleared ({describe_latch(cleared)}); "
            "its nodes may start again"
        )
    return EXIT_OK


def _reset_targets(
    run_dir: Path, info: dict[str, Any]
) -> tuple[set[str], dict[str, set[str] | None]]:
    """What ``quoteforge reset`` may name for the run in ``run_dir``: the fixed names
    (``all``, ``run``, the breaker kinds) and, per exchange of the run's manifest, its
    symbols (None where the strategies take every symbol of it, ``*``, or the copy of the
    manifest cannot be read). A market is named by its key, ``exchange:symbol``."""
    fixed = {"all", "run", *KINDS}
    try:
        data = yaml.safe_load((run_dir / "manifest.yaml").read_text(encoding="utf-8"))
        apply_overrides(data, list(info.get("overrides") or []))
        exchanges: dict[str, set[str] | None] = {str(name): set() for name in data["exchanges"]}
        for spec in data["strategies"].values():
            symbols = spec["symbols"]
            for entry in [symbols] if isinstance(symbols, str) else symbols:
                venue, symbol = split_market(str(spec["exchange"]), str(entry))
                known = exchanges.get(venue)
                if known is not None:
                    known.add(symbol)
                if symbol == "*" or "$" in symbol:
                    exchanges[venue] = None
    except (OSError, yaml.YAMLError, ManifestError, AttributeError, KeyError, TypeError):
        return fixed, {}
    return fixed, exchanges


def _reset_refusal(run_dir: Path, info: dict[str, Any], who: str) -> str | None:
    """Why ``who`` names nothing the run can reset, or None."""
    fixed, exchanges = _reset_targets(run_dir, info)
    venue, sep, symbol = who.partition(":")
    if who in fixed or (sep and not exchanges):
        return None
    if sep and venue in exchanges:
        symbols = exchanges[venue]
        if symbols is None or symbol in symbols:
            return None
    markets = sorted(f"{v}:{s}" for v, known in exchanges.items() for s in known or ())
    markets += sorted(f"{v}:SYMBOL" for v, known in exchanges.items() if known is None)
    return (
        f"no breaker or market {who!r} in run {info.get('run_id')}: give all, run, a "
        f"breaker kind ({', '.join(KINDS)}) or a market key ({', '.join(markets) or 'none'})"
    )


def _not_running(info: dict[str, Any]) -> str | None:
    """Why the run of ``info`` cannot act on a request any more, or None."""
    if info.get("finished_at"):
        return f"run {info.get('run_id')} already finished ({info.get('stop_reason')})"
    pid = info.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return (
                f"run {info.get('run_id')} is not running (its process {pid} is gone "
                "without finishing; quoteforge run --resume continues it)"
            )
        except PermissionError:
            pass  # alive, under another user
    return None


def reset_main(argv: list[str]) -> int:
    """``quoteforge reset RUN_DIR [--breaker WHO]``."""
    p = argparse.ArgumentParser(prog="quoteforge reset")
    p.add_argument("run", type=Path, help="the run folder")
    p.add_argument(
        "--breaker", default="all", help="all, run, a breaker kind (pnl_floor...) or a market"
    )
    args = p.parse_args(argv)
    run_dir: Path = args.run
    info = _run_info(run_dir)
    if info is None:
        return EXIT_USAGE
    refusal = _reset_refusal(run_dir, info, args.breaker)
    if refusal is not None:
        print(f"quoteforge reset: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    stopped = _not_running(info)
    if stopped is None:
        (run_dir / RESET_FILE).write_text(args.breaker + "\n", encoding="utf-8")
        # A run that finished meanwhile never reads the file: take it back.
        stopped = _not_running(_run_info(run_dir) or {})
        if stopped is not None:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / RESET_FILE).unlink()
    if stopped is not None:
        print(f"quoteforge reset: {stopped}: nothing to reset", file=sys.stderr)
        return EXIT_ERROR
    print(f"breaker reset ({args.breaker}) requested; the run applies it within a second")
    return EXIT_OK


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register("kill", kill_main, help="kill switch: cancel every order of a running run and stop it")
    register("reset", reset_main, help="reset latched circuit breakers of a running run")
