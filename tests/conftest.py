"""Shared fixtures: the plugin registry and small manifests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from quoteforge.registry import PluginRegistry, load_registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    return load_registry()


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
    message = f"{name} is not reachable on {host}:{port}; start it with: {start}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)
