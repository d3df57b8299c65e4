"""The distributed runtime: one run split into market-data, strategy, execution and monitor
nodes over a message bus (see docs/distributed.md).

This package is the plugin's entry point. It registers the ``node`` command,
``quoteforge node ROLE MANIFEST``, which runs one node of a split run; the kernel's
``quoteforge run MANIFEST --node ROLE`` hands its arguments to that command, so the
kernel never imports the runtime. The runtime (``nodes`` and the bus pieces) is imported
when a node starts, not when the plugin loads.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from quoteforge import hookimpl
from quoteforge.registry import RegisterCommand

__all__ = ["NODE_ROLES", "node_main"]

#: The roles of a split run, one process each (``all``, the whole run in one process, is
#: the kernel's ordinary ``quoteforge run``).
NODE_ROLES = ("marketdata", "strategy", "execution", "monitor")

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quoteforge node",
        description="Run one node of a split run over the bus (also: quoteforge run "
        "MANIFEST --node ROLE). Start one process per role, with the same manifest.",
    )
    p.add_argument(
        "role", choices=NODE_ROLES, metavar="ROLE", help=f"the node: {', '.join(NODE_ROLES)}"
    )
    p.add_argument(
        "manifest", type=Path, metavar="MANIFEST", help="the manifest (with a network bus)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a manifest value, e.g. nodes.heartbeat=1s",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="RUN_DIR",
        help="run folder (default: <run.out_dir>/<name>-<role>-<time>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="strategy node only: continue the run folder given by --out (its journal's "
        "orders and position; missed fills are asked of the execution node)",
    )
    p.add_argument(
        "--continue",
        dest="continue_finished",
        action="store_true",
        help="with --resume: continue a strategy node that stopped normally (trades again)",
    )
    p.add_argument(
        "--log-level", default="INFO", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR"
    )
    return p


def node_main(argv: list[str]) -> int:
    """``quoteforge node ROLE MANIFEST [--set K=V] [--out DIR [--resume]] [--log-level L]``: run the
    node until the run's duration passes, a stop signal or the kill switch. Exit code 0
    ok, 1 the node failed, 2 a refused manifest or configuration, another instance of the
    role online, or a strategy node refused by an execution node bound to another one."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    from quoteforge.engine import new_run_dir
    from quoteforge.logs import configure_logging
    from quoteforge.manifest import ManifestError, load_manifest
    from quoteforge.registry import load_registry

    configure_logging(args.log_level)
    if args.resume:
        from quoteforge.resume import ResumeRefusedError, check_resumable

        if args.role != "strategy" or args.out is None:
            print(
                "quoteforge node: --resume is for the strategy node, with its run folder as "
                "--out (or: quoteforge run --resume RUN_DIR --node strategy)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            info = check_resumable(args.out, continue_finished=args.continue_finished)
        except ResumeRefusedError as exc:
            print(f"quoteforge node --resume: {exc}", file=sys.stderr)
            return EXIT_USAGE
        args.overrides = [*info.get("overrides", []), *args.overrides]
    registry = load_registry()
    try:
        loaded = load_manifest(args.manifest, registry, overrides=args.overrides)
    except ManifestError as exc:
        print(f"manifest refused:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    m = loaded.manifest
    run_dir = args.out or new_run_dir(Path(m.run.out_dir), f"{m.run.name}-{args.role}")
    configure_logging(args.log_level, run_id=run_dir.name, secrets=loaded.secrets)
    from quoteforge.plugins.distributed.nodes import run_node

    return asyncio.run(
        run_node(
            loaded,
            registry,
            args.role,
            run_dir,
            args.manifest,
            settings=m.nodes,
            resume=args.resume,
        )
    )


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "node",
        node_main,
        help="run one node (marketdata, strategy, execution, monitor) of a split run",
    )
