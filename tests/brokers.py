"""Mosquitto for the tests: the shared broker on 127.0.0.1:1883, private brokers on
free loopback ports for tests that kill and restart them, and secure ones set up the way
examples/distributed/ tells an operator to (passwords, TLS, the shipped ACL)."""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from quoteforge.plugins.bus_mqtt import MqttParams, MqttTlsParams

SHARED_PORT = 1883
REPO = Path(__file__).resolve().parents[1]
SHIPPED_ACL = REPO / "examples" / "distributed" / "mosquitto.acl"
ROLES = ("marketdata", "strategy", "execution", "monitor")
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


def make_tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (CA file, cert, key)."""
    if shutil.which("openssl") is None:
        message = "openssl is not installed (apt-get install -y openssl): the TLS tests need it"
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=qf-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return workdir / "ca.crt", workdir / "server.crt", workdir / "server.key"


class SecureBroker(Broker):
    """A private Mosquitto as examples/distributed/README.md sets one up: no anonymous
    access, one password-file user per node role, TLS only, and the shipped ACL.
    ``env(role)`` is what an operator exports for that role's node."""

    def __init__(self, workdir: Path, acl: Path = SHIPPED_ACL) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = make_tls_files(workdir)
        self.passwords = {role: secrets.token_hex(8) for role in ROLES}
        self.key = secrets.token_hex(32)
        passwd = workdir / "passwd"
        for i, (role, password) in enumerate(self.passwords.items()):
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run(
                ["mosquitto_passwd", *flags, str(passwd), role, password],
                check=True,
                capture_output=True,
            )
        super().__init__(
            workdir,
            f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
            f"cafile {self.ca}\ncertfile {cert}\nkeyfile {key}\n",
        )

    def env(self, role: str) -> dict[str, str]:
        """The environment of the node of ``role``, as the example manifest reads it."""
        return {
            "QF_MQTT_PASSWORD": self.passwords[role],
            "QF_MQTT_CA": str(self.ca),
            "QUOTEFORGE_BUS_KEY": self.key,
        }

    def params(self, role: str | None, *, signed: bool = True, **overrides: Any) -> MqttParams:
        """Params of a test-side client: ``role`` None connects anonymously; ``signed``
        False leaves out the bus key."""
        values: dict[str, Any] = {
            "port": self.port,
            "tls": MqttTlsParams(ca_file=self.ca),
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.3,
            "connect_timeout_s": 3,
            "heartbeat_interval_s": 0,
            "close_timeout_s": 1,
        }
        if role is not None:
            values.update(username=role, password=SecretStr(self.passwords[role]))
        if signed:
            values["signing_key"] = SecretStr(self.key)
        values.update(overrides)
        return MqttParams(**values)


def running_secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A started SecureBroker, killed when the caller resumes the generator (the body of
    a module-scoped fixture)."""
    broker = SecureBroker(tmp_path_factory.mktemp("secure-broker"))
    broker.start()
    yield broker
    broker.kill()
