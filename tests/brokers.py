"""Mosquitto for the tests: the shared broker on 127.0.0.1:1883 and private brokers on
free loopback ports for tests that kill and restart them."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SHARED_PORT = 1883
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_HINT = "start it with: mosquitto -d -c /etc/mosquitto/mosquitto.conf"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_shared_broker() -> int:
    """The shared broker's port; under CI a missing broker fails the run."""
    if not port_open(SHARED_PORT):
        message = f"Mosquitto is not running on 127.0.0.1:{SHARED_PORT}; {START_HINT}"
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_PORT


class Broker:
    """A private Mosquitto process on a free loopback port that tests may kill."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        if shutil.which(MOSQUITTO) is None and not Path(MOSQUITTO).exists():
            message = "mosquitto binary not installed: apt-get install mosquitto"
            if under_ci():
                pytest.fail(message)
            pytest.skip(message)
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        # Run as whoever runs the tests: started as root, mosquitto would switch to the
        # "mosquitto" user, which cannot read the test's temporary files.
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nuser {getpass.getuser()}\n"
            f"{extra_config or 'allow_anonymous true'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 5
        while not port_open(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not open its port")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
