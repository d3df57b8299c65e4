"""The ``webhook`` alert channel: each alert is POSTed as JSON to an HTTP endpoint.

Sending happens in the run's event loop with a timeout and retries; an endpoint that
fails is logged, never allowed to stop or slow the run.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from quoteforge import hookimpl
from quoteforge.registry import Register

__all__ = [
    "WebhookChannel",
    "WebhookParams",
    "alert_payload",
    "quoteforge_register_alert_channels",
    "quoteforge_run_started",
]


class WebhookParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    url: str = Field(
        description="Endpoint that receives the alerts (http or https). Put a secret URL "
        "in an environment variable: url: ${ALERT_WEBHOOK_URL}."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. Authorization: Bearer ${ALERT_TOKEN}. "
        "Values are secrets: never logged or written to the run folder.",
    )
    timeout: float = Field(5.0, gt=0, description="Seconds to wait for one attempt.")
    retries: int = Field(3, ge=0, le=10, description="Further attempts after a failed one.")
    backoff: float = Field(
        0.5, ge=0, description="Seconds before the first retry; doubles after each retry."
    )
    kinds: list[str] | None = Field(
        None, description="Only send these alert kinds (default: every alert)."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "expected an http:// or https:// URL with a host, e.g. "
                "https://hooks.example.com/quoteforge"
            )
        return value


def alert_payload(alert: Any, run_id: str) -> dict[str, Any]:
    """The JSON body sent for ``alert`` (a ``quoteforge.engine.Alert``)."""
    return {
        "kind": alert.kind,
        "severity": alert.severity,
        "market": alert.market,
        "message": alert.message,
        "run_id": run_id,
        "time": datetime.fromtimestamp(alert.ts_ns / 1e9, UTC).isoformat(),
        "ts_ns": alert.ts_ns,
    }


class _RetryableError(Exception):
    """The endpoint may accept the alert on another attempt."""


class _RejectedError(Exception):
    """The endpoint refused the request itself: retrying cannot help."""


class WebhookChannel:
    """POSTs each alert as JSON; retries timeouts, connection errors, 429 and 5xx."""

    Params = WebhookParams

    def __init__(self, params: WebhookParams) -> None:
        self.params = params
        self.run_id = "-"
        parts = urlsplit(params.url)
        # Paths and queries of webhook URLs are often the secret itself: logs name the
        # endpoint by scheme, host and port only.
        self.endpoint = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.sent = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"WebhookChannel({self.endpoint})"

    async def send(self, alert: Any) -> bool:
        """Deliver one alert; True when the endpoint accepted it. Never raises."""
        import aiohttp

        p = self.params
        if p.kinds is not None and alert.kind not in p.kinds:
            return False
        headers = {name: value.get_secret_value() for name, value in p.headers.items()}
        body = alert_payload(alert, self.run_id)
        timeout = aiohttp.ClientTimeout(total=p.timeout)
        delay = p.backoff
        problem = ""
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(p.retries + 1):
                if attempt:
                    await asyncio.sleep(delay)
                    delay *= 2
                try:
                    await self._post(session, body, headers)
                except _RetryableError as exc:
                    problem = str(exc)
                    continue
                except TimeoutError:
                    problem = f"no answer within {p.timeout:g}s"
                    continue
                except aiohttp.ClientError as exc:
                    # The exception text is not logged: it can quote the request URL.
                    problem = f"connection failed ({type(exc).__name__})"
                    continue
                except _RejectedError as exc:
                    problem = str(exc)
                    break
                self.sent += 1
                logger.debug(
                    "alert {} sent to webhook {} (attempt {})",
                    alert.kind,
                    self.endpoint,
                    attempt + 1,
                )
                return True
        self.failed += 1
        logger.error(
            "alert {} not delivered to webhook {}: {}; the run goes on",
            alert.kind,
            self.endpoint,
            problem,
        )
        return False

    async def _post(self, session: Any, body: dict[str, Any], headers: dict[str, str]) -> None:
        async with session.post(self.params.url, json=body, headers=headers) as resp:
            if 200 <= resp.status < 300:
                return
            if resp.status == 429 or resp.status >= 500:
                raise _RetryableError(f"HTTP {resp.status}")
            raise _RejectedError(f"HTTP {resp.status} (not retried: fix the webhook settings)")


@hookimpl
def quoteforge_register_alert_channels(register: Register) -> None:
    register(
        "webhook",
        WebhookChannel,
        params=WebhookParams,
        description="POST each alert as JSON to an HTTP endpoint, with retries.",
        requires=("aiohttp",),
    )


@hookimpl
def quoteforge_run_started(run: Any) -> None:
    # Channels are built before the run starts and only get ``params``; the run id
    # that every payload carries is handed over here.
    for channel in getattr(run, "alert_channels", ()):
        if isinstance(channel, WebhookChannel):
            channel.run_id = run.run_id
