"""Node processes of a split run for the tests: each role a process of its own with its
run folder and log file, started with the environment an operator gives that role's
node on the test's broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from brokers import SecureBroker

RUNNER = textwrap.dedent(
    """
    import os, time
    # A node whose wall clock is off by QF_TEST_CLOCK_SKEW_S seconds (monotonic untouched).
    _skew_ns = int(float(os.environ.get("QF_TEST_CLOCK_SKEW_S") or 0) * 1e9)
    if _skew_ns:
        _time_ns, _time = time.time_ns, time.time
        time.time_ns = lambda: _time_ns() + _skew_ns
        time.time = lambda: _time() + _skew_ns / 1e9

    import asyncio, sys
    from pathlib import Path
    from quoteforge.logs import configure_logging
    from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
    from quoteforge.registry import load_registry

    manifest, role, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    resume = sys.argv[4:] == ["resume"]
    configure_logging("INFO")
    registry = load_registry()
    loaded, settings = load_node_manifest(manifest, registry)
    sys.exit(
        asyncio.run(
            run_node(
                loaded, registry, role, out, Path(manifest), settings=settings, resume=resume
            )
        )
    )
    """
)


class Nodes:
    """Node processes of one test, each with its run folder and log file, started with
    the environment an operator gives that role's node on ``broker``."""

    def __init__(self, tmp_path: Path, broker: SecureBroker) -> None:
        self.tmp = tmp_path
        self.broker = broker
        self.runner = tmp_path / "runner.py"
        self.runner.write_text(RUNNER, encoding="utf-8")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def dir(self, role: str) -> Path:
        return self.tmp / f"node-{role}"

    def start(
        self,
        manifest: Path,
        *roles: str,
        env: dict[str, str] | None = None,
        resume: bool = False,
        name: str | None = None,
        clock_skew_s: float = 0.0,
    ) -> None:
        """Start a node of each role; ``env`` adds to every node's environment (a
        venue's credentials, which only the execution node uses); ``resume`` continues
        the node's run folder (the strategy node's). ``name`` (one role only) names a
        second node of a role (its process, log and run folder); ``clock_skew_s`` puts
        the nodes' wall clocks that far ahead (negative: behind)."""
        assert name is None or len(roles) == 1, "name needs exactly one role"
        for role in roles:
            key = name or role
            log = (self.tmp / f"{key}.log").open("wb")
            args = [str(manifest), role, str(self.dir(key)), *(["resume"] if resume else [])]
            skew = {"QF_TEST_CLOCK_SKEW_S": str(clock_skew_s)} if clock_skew_s else {}
            self.procs[key] = subprocess.Popen(
                [sys.executable, str(self.runner), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env={**os.environ, **self.broker.env(role), **(env or {}), **skew},
            )

    def log(self, role: str) -> str:
        return (self.tmp / f"{role}.log").read_text(encoding="utf-8", errors="replace")

    async def wait(self, timeout: float, *roles: str) -> dict[str, int]:
        """Exit codes of the nodes; polls so that the test's own bus keeps receiving."""
        deadline = time.monotonic() + timeout
        codes: dict[str, int] = {}
        for role in roles or tuple(self.procs):
            while (code := self.procs[role].poll()) is None:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{role} node still running after {timeout}s; its log:\n"
                        + self.log(role)[-3000:]
                    )
                await asyncio.sleep(0.05)
            codes[role] = code
        return codes

    def info(self, role: str) -> dict[str, Any]:
        return json.loads((self.dir(role) / "run.json").read_text(encoding="utf-8"))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
