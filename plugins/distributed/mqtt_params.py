"""Parameters of the ``mqtt`` bus backend: broker address, credentials, TLS, session,
reconnect, batching, heartbeat and the signing key of a signed bus, with the checks a
run makes before it trusts a connection (``MqttParams.security_problems``, and the live
run's refusal in ``MqttParams.manifest_problems``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from quoteforge.plugins.distributed.signing import MIN_KEY_BYTES, TOKEN_PATTERN

__all__ = ["MqttParams", "MqttTlsParams", "unprotected_bus_refusal"]


def unprotected_bus_refusal(who: str, problems: list[str]) -> str:
    """The refusal of a run (``who``: "--node strategy", "a live run") to trade over a
    bus with ``problems``, and the one way out."""
    return (
        f"{who} refuses to trade over an unprotected bus: "
        + "; ".join(problems)
        + ". See docs/security.md; for a throwaway test broker only, set "
        "bus.params.insecure: true"
    )


class MqttTlsParams(BaseModel):
    """TLS settings for the broker connection."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ca_file: Path | None = Field(
        default=None,
        description="PEM file with the CA certificate(s) that signed the broker's "
        "certificate; the system trust store when unset",
    )
    cert_file: Path | None = Field(
        default=None,
        description="PEM client certificate, for brokers that authenticate clients by TLS",
    )
    key_file: Path | None = Field(
        default=None, description="PEM private key of cert_file (omit when cert_file holds the key)"
    )
    insecure: bool = Field(
        default=False,
        description="do not check that the broker's certificate names its host; for test "
        "brokers with self-made certificates only",
    )

    @model_validator(mode="after")
    def _files_exist(self) -> MqttTlsParams:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} {str(path)!r} does not exist or is not a file")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set without tls.cert_file: set both or neither")
        return self


class MqttParams(BaseModel):
    """Parameters of the ``mqtt`` bus backend."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = Field(default="127.0.0.1", description="broker host name or IP address")
    port: int = Field(
        default=1883, ge=1, le=65535, description="broker TCP port (8883 is usual for TLS)"
    )
    username: str | None = Field(
        default=None,
        description="user name for broker authentication; in a split run '{role}' stands "
        "for the node's role (marketdata, strategy, execution, monitor)",
    )
    password: SecretStr | None = Field(
        default=None, description="password for broker authentication; use ${ENV_VAR} in manifests"
    )
    tls: MqttTlsParams | None = Field(
        default=None, description="TLS settings; plain TCP when unset"
    )
    client_id: str | None = Field(
        default=None,
        description="MQTT client id, unique per node; a random one when unset (required "
        "with clean_session: false)",
    )
    clean_session: bool = Field(
        default=True,
        description="false keeps this node's subscriptions and its queued QoS 1 messages "
        "at the broker while it is away (needs a fixed client_id)",
    )
    node: str | None = Field(
        default=None, description="name in this node's heartbeat topic; the client id when unset"
    )
    keepalive: int = Field(
        default=30,
        ge=2,
        le=65535,
        description="seconds between MQTT pings; a dead link is noticed after 1.5x this",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=315_360_000,
        description="seconds to wait for the broker when connecting",
    )
    reconnect_min_s: float = Field(
        default=0.2, gt=0, le=315_360_000, description="first reconnect delay in seconds"
    )
    reconnect_max_s: float = Field(
        default=10.0,
        gt=0,
        le=315_360_000,
        description="longest reconnect delay; the delay doubles up to this",
    )
    reconnect_jitter: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="fraction of each reconnect delay that is random, so that many nodes "
        "do not reconnect in lockstep",
    )
    max_queued: int = Field(
        default=100_000,
        ge=1,
        description="messages buffered while the broker is slow or away; QoS 1 messages "
        "beyond this are dropped with a warning",
    )
    max_inflight: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="QoS 1 MQTT publishes (single messages or batch frames) sent but not "
        "yet acknowledged",
    )
    batch_max_messages: int = Field(
        default=256,
        ge=1,
        description="most messages of one topic sent together in one batch frame; 1 sends "
        "every message alone, in the single-envelope form older quoteforge versions read",
    )
    batch_max_bytes: int = Field(
        default=65536,
        ge=1,
        description="a batch frame is closed before it grows past this many bytes (a "
        "single larger message still travels alone)",
    )
    linger_us: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="a message published less than this many microseconds after the "
        "previous send waits until then, to leave together with what follows; a message "
        "after a quiet spell leaves at once. Bounds MQTT publishes to about 1/linger per "
        "second under a steady stream; 0 sends at every event-loop pass",
    )
    dedup_capacity: int = Field(
        default=100_000,
        ge=1,
        description="message ids remembered to apply each message at most once",
    )
    heartbeat_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=315_360_000,
        description="seconds between heartbeats on heartbeat/<node>; 0 disables",
    )
    close_timeout_s: float = Field(
        default=3.0,
        ge=0,
        le=315_360_000,
        description="seconds close() waits for queued messages to reach the broker",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key shared by the nodes of a run: every frame is signed "
        "with it and frames not signed with it are refused. Write ${QUOTEFORGE_BUS_KEY} "
        f"(at least {MIN_KEY_BYTES} bytes, e.g. openssl rand -hex 32), never the key itself",
    )
    key_id: str = Field(
        default="k1",
        pattern=f"^{TOKEN_PATTERN}$",
        description="name of signing_key, sent with every signed frame; change it with "
        "the key so a node holding the old key says so clearly",
    )
    max_age_s: float = Field(
        default=60.0,
        gt=0,
        le=315_360_000,
        description="signed frames sent more than this many seconds from this machine's "
        "clock are refused as replays; covers clock skew and time queued at the broker",
    )
    insecure: bool = Field(
        default=False,
        description="let a split run, or a live run in one process, connect anonymously, "
        "over plain TCP to another machine, or without signing_key; for throwaway test "
        "brokers only (warned at every start)",
    )

    @field_validator("client_id", "node")
    @classmethod
    def _one_level(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#\x00")):
            raise ValueError(
                f"{value!r} must be non-empty without '/', '+' or '#' (it becomes a topic level)"
            )
        return value

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(
                f"signing_key is shorter than {MIN_KEY_BYTES} bytes: use a random key, "
                "e.g. export QUOTEFORGE_BUS_KEY=$(openssl rand -hex 32)"
            )
        return value

    def security_problems(self) -> list[str]:
        """What makes this connection unfit for a run that trades over it: anonymous
        access, plain TCP to another machine, or unsigned messages. Empty when sound."""
        problems: list[str] = []
        if self.username is None and (self.tls is None or self.tls.cert_file is None):
            problems.append(
                "the bus connects anonymously: set username and password "
                "(username: '{role}', password: ${QF_MQTT_PASSWORD}) or a TLS client "
                "certificate (tls.cert_file)"
            )
        if self.tls is None and not _is_loopback(self.host):
            problems.append(
                f"the broker {self.host} is not on this machine and the connection is plain "
                "TCP: set tls.ca_file (and port 8883) so credentials and orders are encrypted"
            )
        if self.signing_key is None:
            problems.append(
                "bus messages are not signed: set signing_key: ${QUOTEFORGE_BUS_KEY} and "
                "export the same random key on every node (openssl rand -hex 32)"
            )
        return problems

    def manifest_problems(self, manifest: Any, spec: Any) -> list[tuple[tuple[str, ...], str]]:
        """A live run refuses a bus anyone on the broker could write to (checked when the
        manifest is loaded, so before anything connects): even in one process, the
        engine stops the run and cancels its orders on any message on
        ``quoteforge/<run>/control/kill``. Other modes are warned at start instead
        (``bus_mqtt.quoteforge_run_started``); split nodes refuse in every mode
        (``nodes.run_node``)."""
        if manifest.run.mode != "live" or self.insecure:
            return []
        problems = self.security_problems()
        if not problems:
            return []
        return [(("params",), unprotected_bus_refusal("a live run", problems))]

    @model_validator(mode="after")
    def _consistent(self) -> MqttParams:
        if self.password is not None and self.username is None:
            raise ValueError("password is set without username: set both or neither")
        if not self.clean_session and self.client_id is None:
            raise ValueError(
                "clean_session: false needs a fixed client_id, so the broker can find this "
                "node's session again after a reconnect"
            )
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) is larger than reconnect_max_s "
                f"({self.reconnect_max_s})"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
