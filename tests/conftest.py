"""Shared fixtures: the plugin registry, small manifests, and the secured broker and
node processes of the split-run tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import SecureBroker, running_secure_broker
from split_nodes import Nodes

from quoteforge.registry import PluginRegistry, load_registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    return load_registry()


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A Mosquitto of the module's own with passwords, TLS and the shipped ACL."""
    yield from running_secure_broker(tmp_path_factory)


@pytest.fixture
def nodes(tmp_path: Path, secure_broker: SecureBroker) -> Iterator[Nodes]:
    """Node processes of one test on ``secure_broker``, killed at its end if still up."""
    made = Nodes(tmp_path, secure_broker)
    yield made
    made.stop_all()


def service_available(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int, start: str) -> None:
    """Skip locally when a service is down; under CI a missing service fails the run."""
    if service_available(host, port):
        return
    skip_or_fail(f"{name} is not reachable on {host}:{port}; start it with: {start}")


def skip_or_fail(message: str) -> None:
    """A service a test needs is missing: skipped locally, a failure under CI (``CI``
    set to 1, true or yes), so CI never passes without it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


PG_DSN = os.environ.get("QUOTEFORGE_TEST_PG_DSN", "postgresql://127.0.0.1:5432/test")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test database (QUOTEFORGE_TEST_PG_DSN), checked once: skipped locally and
    failed under CI (``CI=true``) when the driver or the server is missing."""
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3):
            return PG_DSN
    except ImportError:
        message = 'psycopg is not installed: pip install "quoteforge[postgres]"'
    except psycopg.OperationalError as exc:
        message = (
            f"PostgreSQL is not reachable at {PG_DSN} ({str(exc).strip()}); start it: {PG_START}"
        )
    skip_or_fail(message)
    raise AssertionError("unreachable")
