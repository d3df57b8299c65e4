"""The dashboard's control buttons: the page sends each action, with the token the operator
typed into it, to the dashboard, which passes it on to the run's control API (the
``control_http`` plugin; its address is in the run folder's ``control.json``).

The dashboard keeps no token: a request without ``Authorization: Bearer ...`` is refused
here and nothing is sent; with one, the control API checks it, runs the action through
the run's own methods (the order gate, the order manager) and journals it. Only the
control API's own endpoints are passed on, and only from the dashboard's own page (the
dashboard's Host/Origin checks run first). In a split run the control API is served by
the strategy node (its engine), whose cancels and kill switch reach the execution node
over the signed bus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["CONTROL_FILE", "ControlRefusedError", "control_url", "forward"]

CONTROL_FILE = "control.json"  # what control_http writes into the run folder
TOKEN_ENV = "QUOTEFORGE_CONTROL_TOKEN"

# The control API's endpoints, as the page names them (path segments URL-encoded).
_SEGMENT = r"[A-Za-z0-9._~%!$&'()*+,;=:@-]+"
_POSTS = re.compile(
    rf"^(kill|pull-quotes|breakers/reset|strategies/{_SEGMENT}/(pause|resume|params)"
    rf"|orders/{_SEGMENT}/cancel)$"
)
_GETS = frozenset({"state"})
TIMEOUT_S = 10.0


class ControlRefusedError(Exception):
    """The dashboard refuses to pass an action on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def control_url(run_dir: Path) -> str:
    """The control API's base URL from ``run_dir/control.json``; ControlRefusedError(503)
    when the run serves none (not started with a token, or finished)."""
    try:
        info = json.loads((run_dir / CONTROL_FILE).read_text(encoding="utf-8"))
        url = str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ControlRefusedError(
            503,
            f"this run serves no control API ({run_dir / CONTROL_FILE} is absent): it is "
            f"finished, or was started without {TOKEN_ENV}; start a run with "
            f"{TOKEN_ENV} set to control it from here (docs/operations.md)",
        ) from None
    if not url.startswith("http://"):
        raise ControlRefusedError(502, f"{run_dir / CONTROL_FILE}: not an http URL: {url!r}")
    # An API bound to every interface is reached, and answers, on loopback.
    for wildcard, loopback in (("//0.0.0.0:", "//127.0.0.1:"), ("//[::]:", "//[::1]:")):
        url = url.replace(wildcard, loopback, 1)
    return url.rstrip("/")


async def forward(
    run_dir: Path, method: str, path: str, authorization: str, body: bytes
) -> tuple[int, dict[str, Any]]:
    """Pass one action (``path`` relative to the control API, still URL-encoded) with the
    operator's ``Authorization`` header to the run's control API; (status, JSON answer)."""
    import aiohttp

    allowed = _GETS if method == "GET" else None
    if (allowed is not None and path not in allowed) or (
        allowed is None and (method != "POST" or not _POSTS.match(path))
    ):
        raise ControlRefusedError(404, f"no control action {method} {path!r}")
    if not authorization.startswith("Bearer ") or not authorization[7:].strip():
        raise ControlRefusedError(
            401,
            f"no token: enter the run's control token ({TOKEN_ENV}) in the page; nothing was sent",
        )
    url = control_url(run_dir)
    headers = {"Authorization": authorization}
    if body:
        headers["Content-Type"] = "application/json"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
            session.request(method, f"{url}/{path}", headers=headers, data=body or None) as resp,
        ):
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ControlRefusedError(
            502, f"the run's control API at {url} did not answer ({exc or type(exc).__name__})"
        ) from None
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {"error": f"the control API answered {status}: {text[:200]}"}
    return status, answer
