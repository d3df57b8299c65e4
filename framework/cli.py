"""The ``quoteforge`` command line.

The kernel implements ``run``, ``validate`` and ``manifest``. Every other subcommand
(``plugins``, ``kill``, ``report``, ``sweep``, ``node``, ...) comes from a plugin through
``quoteforge_register_commands``; this module never imports a plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quoteforge.manifest import ManifestError, load_manifest, manifest_schema
from quoteforge.registry import (
    KERNEL_COMMANDS,
    Command,
    PluginRegistry,
    load_registry,
)

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
SUMMARY_ROWS = 20  # a run with more markets prints the totals and the top rows only
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")  # loguru's


def version_text() -> str:
    from quoteforge import __version__

    return f"quoteforge {__version__} (Python {platform.python_version()})"


def _seconds(text: str) -> float:
    if not text.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 (0: never), got {text!r}")
    return float(text)


def _parser(commands: Iterable[Command] = ()) -> argparse.ArgumentParser:
    """The kernel's commands, plus ``commands`` (plugins') listed by name and help."""
    p = argparse.ArgumentParser(
        prog="quoteforge",
        description="Market-making and execution bots from YAML manifests and plugins.",
    )
    p.add_argument("-V", "--version", action="version", version=version_text())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a manifest (sim, backtest, paper or live)")
    run.add_argument("manifest", type=Path, nargs="?", help="the manifest (not with --resume)")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run folder after a crash: journal + venue reconciliation first "
        "(a sim or backtest is replayed exactly from its start)",
    )
    run.add_argument(
        "--continue",
        dest="continue_finished",
        action="store_true",
        help="with --resume: continue a live or paper run that ended normally (trades again)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a manifest value, e.g. strategies.mm.params.spread_bps=12",
    )
    run.add_argument("--out", type=Path, help="run folder (default: <run.out_dir>/<name>-<time>)")
    run.add_argument(
        "--node",
        default="all",
        metavar="ROLE",
        help="run one role of a split run over the bus (default: all, everything in one "
        "process); the roles come with the distributed plugin: quoteforge node --help",
    )
    run.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="default: INFO")
    run.add_argument(
        "--json-log", action="store_true", help="also write log.jsonl in the run folder"
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (bar or lines) and no summary table; the run folder is still printed",
    )
    run.add_argument(
        "--progress-every",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="without a terminal (CI, nohup, systemd), log a progress line this often "
        "(default 10; 0: never)",
    )

    val = sub.add_parser("validate", help="check a manifest without running it")
    val.add_argument("manifest", type=Path)
    val.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE"
    )

    man = sub.add_parser("manifest", help="manifest tools")
    man_sub = man.add_subparsers(dest="manifest_command", required=True, metavar="TOOL")
    man_sub.add_parser("schema", help="print the manifest JSON Schema (for editors)")

    for command in sorted(commands, key=lambda c: c.name):
        sub.add_parser(command.name, help=command.help, add_help=False)

    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-V"], ["--version"]):  # without loading a plugin
        print(version_text())
        return EXIT_OK
    if not argv or argv[0] not in KERNEL_COMMANDS:
        return _plugin_command(argv)
    args = _parser().parse_args(argv)
    handler = {
        "run": _cmd_run,
        "validate": _cmd_validate,
        "manifest": _cmd_manifest,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


# -- plugin commands -------------------------------------------------------------------------


def _command_registry() -> PluginRegistry:
    """The registry, loaded without printing: a plugin command configures its own logging,
    and a plugin that failed to load is named when a command is not found."""
    from loguru import logger

    logger.disable("quoteforge.registry")
    try:
        return load_registry()
    finally:
        logger.enable("quoteforge.registry")


def _plugin_command(argv: list[str]) -> int:
    """Run the plugin command ``argv[0]`` with the rest of ``argv``; with no command (or
    ``--help``) argparse prints the usage of every command, kernel and plugins'."""
    registry = _command_registry()
    if not argv or argv[0].startswith("-"):
        _parser(registry.commands.values()).parse_args(argv)  # exits: help or usage error
        return EXIT_USAGE
    command = registry.commands.get(argv[0])
    if command is None:
        _parser(registry.commands.values()).error(_unknown_command(registry, argv[0]))
    try:
        return int(command.main(argv[1:]))
    except KeyboardInterrupt:
        return 130


def _unknown_command(registry: PluginRegistry, name: str) -> str:
    """Why ``name`` is not a command: the commands there are, and the plugins that failed
    to load (one of them may be the one that provides it)."""
    names = ", ".join([*KERNEL_COMMANDS, *sorted(registry.commands)])
    message = f"unknown command {name!r} (choose from {names})"
    failed = [
        f"{r.name} ({r.install_hint or r.error})" for r in registry.failed_plugins() if r.error
    ]
    if failed:
        message += (
            f"; {len(failed)} plugin(s) failed to load and may provide it: "
            + "; ".join(failed)
            + " (see quoteforge plugins)"
        )
    return message


# -- run / validate ------------------------------------------------------------------------


def _usage(message: str) -> int:
    """Say on stderr why a command cannot go on; its exit code."""
    print(message, file=sys.stderr)
    return EXIT_USAGE


def _load(args: argparse.Namespace, registry: PluginRegistry) -> Any:
    try:
        return load_manifest(args.manifest, registry, overrides=args.overrides)
    except ManifestError as exc:
        print(f"manifest refused:\n{exc}", file=sys.stderr)
        return None


def _cmd_validate(args: argparse.Namespace) -> int:
    from quoteforge.logs import configure_logging

    configure_logging("WARNING")
    registry = load_registry()
    loaded = _load(args, registry)
    if loaded is None:
        return EXIT_USAGE
    m = loaded.manifest
    print(
        f"{args.manifest}: ok — mode {m.run.mode}, {len(m.exchanges)} exchange(s), "
        f"{len(m.strategies)} strategy(ies), {len(m.risk)} risk check(s)"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from quoteforge.engine import new_run_dir, run_manifest
    from quoteforge.logs import configure_logging

    configure_logging(args.log_level)
    registry = load_registry()
    if args.resume is not None:
        if args.manifest is not None or args.out is not None:
            return _usage("--resume takes the run folder only (its manifest.yaml is used)")
        from quoteforge.resume import ResumeRefusedError, check_resumable

        try:
            info = check_resumable(args.resume, continue_finished=args.continue_finished)
        except ResumeRefusedError as exc:
            return _usage(f"quoteforge run --resume: {exc}")
        args.manifest = args.resume / "manifest.yaml"
        args.overrides = [*info.get("overrides", []), *args.overrides]
        args.out = args.resume
    elif args.manifest is None:
        return _usage("quoteforge run: give a MANIFEST or --resume RUN_DIR")
    elif args.continue_finished:
        return _usage("quoteforge run: --continue goes with --resume RUN_DIR")
    if args.node != "all":
        if args.resume is not None and args.node != "strategy":
            return _usage(
                "--resume with --node: only the strategy node resumes (its journal holds the "
                "run's orders and position); start the other nodes again with the manifest"
            )
        return _run_node(args, registry)
    loaded = _load(args, registry)
    if loaded is None:
        return EXIT_USAGE
    m = loaded.manifest
    run_dir = args.out or new_run_dir(Path(m.run.out_dir), m.run.name)
    refused = _unusable_run_dir(run_dir, resuming=args.resume is not None)
    if refused:
        return _usage(f"quoteforge run: {refused}")
    resumed = " (resuming)" if args.resume is not None else ""
    print(f"run folder: {run_dir}{resumed}", file=sys.stderr, flush=True)
    configure_logging(
        args.log_level,
        json_path=run_dir / "log.jsonl" if args.json_log else None,
        run_id=run_dir.name,
        secrets=loaded.secrets,
    )
    try:
        run = asyncio.run(
            run_manifest(
                loaded,
                registry,
                run_dir=run_dir,
                manifest_path=args.manifest,
                resume=args.resume is not None,
                progress_every=None if args.quiet else args.progress_every or None,
                progress_bar=not args.quiet,
            )
        )
    except Exception as exc:
        from quoteforge.resume import ResumeRefusedError

        if isinstance(exc, ResumeRefusedError):
            return _usage(f"quoteforge run --resume: {exc}")
        from loguru import logger

        if isinstance(exc, ValueError):  # a value the manifest could not check: say which
            logger.opt(exception=exc).debug("run failed")
        trace = None if isinstance(exc, ValueError) else exc
        logger.opt(exception=trace).error("run failed: {}", exc)
        return EXIT_ERROR
    if not args.quiet:  # the results first: the report takes a second or more
        rows = run.summary_rows()
        print(format_summary(rows, SUMMARY_ROWS, more=run_dir / "summary.csv"), flush=True)
    _write_report(registry, run_dir, m.report.html, m.report.png)
    if not args.quiet:
        print(f"\nrun folder: {run_dir}  ({run.stop_reason})")
    failed = run.run_info.get("incomplete") or run.run_info.get("orders_left_open")
    return EXIT_ERROR if failed else EXIT_OK  # the data broke off, or orders may be open


def _unusable_run_dir(run_dir: Path, *, resuming: bool) -> str | None:
    """Create the run folder, or say why not: another run is in it (one journal would
    mix both runs), or the path cannot be a folder."""
    try:
        if not resuming and run_dir.is_dir() and any(run_dir.iterdir()):
            return (
                f"--out {run_dir} is not empty (another run's folder?): give another --out, "
                f"or continue that run with quoteforge run --resume {run_dir}"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
        return f"cannot create the run folder {run_dir}: {why} ({exc.filename})"
    return None


def _run_node(args: argparse.Namespace, registry: PluginRegistry) -> int:
    """``run MANIFEST --node ROLE``: the ``node`` command of the distributed plugin runs
    it (``quoteforge node ROLE MANIFEST``), with the same manifest, overrides, run folder
    and log level. ``--json-log`` and ``--quiet`` do not apply to a node."""
    command = registry.commands.get("node")
    if command is None:
        failed = next((r for r in registry.failed_plugins() if r.name == "distributed"), None)
        why = f" (it failed to load: {failed.install_hint or failed.error})" if failed else ""
        return _usage(
            f"quoteforge run --node {args.node}: no plugin provides the 'node' command; the "
            f"split-run roles come with the distributed plugin "
            f"(quoteforge.plugins.distributed){why}"
        )
    argv = [args.node, str(args.manifest), "--log-level", args.log_level]
    for override in args.overrides:
        argv += ["--set", override]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    if args.resume is not None:  # checked above; --out is its folder
        argv += ["--resume", *(["--continue"] if args.continue_finished else [])]
    return int(command.main(argv))


def _write_report(registry: PluginRegistry, run_dir: Path, html: bool, png: bool) -> None:
    """The end-of-run report, by whichever plugin implements ``quoteforge_write_report``
    (the report plugin, behind its extra)."""
    if not (html or png):
        return
    from loguru import logger

    hook = registry.pm.hook.quoteforge_write_report
    if not hook.get_hookimpls():
        logger.warning(
            "report not written (no plugin implements quoteforge_write_report); "
            'install it with: pip install "quoteforge[report]"'
        )
        return
    logger.info("writing the report…")
    start = time.monotonic()
    try:
        written = hook(run_dir=run_dir, html=html, png=png)
    except Exception as exc:  # a report failure never loses the run's data
        logger.opt(exception=exc).error("report failed: {}; the run folder is intact", exc)
        return
    if written:
        logger.info("report written in {:.1f} s ({} files)", time.monotonic() - start, len(written))


def format_summary(rows: list[dict[str, Any]], limit: int = 0, more: Path | None = None) -> str:
    """The per-market table printed at the end of a run. With more than ``limit`` rows
    (0: no limit), the ``limit`` markets with the largest |pnl| (then fills), a totals line
    and how many more markets ``more`` (summary.csv) holds."""
    cols = ["market", "mid", "spread", "inventory", "pnl", "fill_count", "notional", "max_drawdown"]
    tail: list[str] = []
    if limit and len(rows) > limit:
        pnl, fills = (sum(r.get(c) or 0 for r in rows) for c in ("pnl", "fill_count"))
        traded = sum(1 for r in rows if r.get("fill_count"))
        where = f" in {more}" if more is not None else ""
        tail = [f"… and {len(rows) - limit:,} more markets{where}"]
        tail += [
            f"{len(rows):,} markets ({traded:,} traded): {fills:,} fills, pnl {pnl:,.6g} (sum)"
        ]
        rows = sorted(rows, key=lambda r: (-abs(r.get("pnl") or 0), -(r.get("fill_count") or 0)))
        rows = rows[:limit]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.6g}" if abs(v) < 1e6 else f"{v:,.0f}"
        return str(v)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = []
    for n, row in enumerate(table):
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + tail)


# -- manifest / report ------------------------------------------------------------------------


def _cmd_manifest(args: argparse.Namespace) -> int:
    print(json.dumps(manifest_schema(load_registry()), indent=2, default=str))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
