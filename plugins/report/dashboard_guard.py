"""Who the dashboard and the control API answer: the ``Host`` and ``Origin`` checks that keep
a web page on another site (DNS rebinding, a cross-origin fetch) from reading or driving
them, and what counts as a loopback address."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["LOOPBACK_NAMES", "host_name", "is_loopback", "origin_host", "served_names"]

#: Host names every dashboard answers to: the loopback addresses and ``localhost``.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lowered;
    None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        name = value[1:end]
    else:
        name, sep, port = value.partition(":")
        if sep and not port.isdigit():
            return None
    return name.rstrip(".") or None


def origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header of our own scheme; None for anything else."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme != "http" or not host:
        return None
    return host.rstrip(".")


def served_names(extra: Iterable[str]) -> frozenset[str]:
    names = set(LOOPBACK_NAMES)
    for name in extra:
        try:
            host: str | None = str(ipaddress.ip_address(name.strip().strip("[]")))
        except ValueError:
            host = host_name(name)
        if host is None:
            raise ValueError(f"not a host name or address: {name!r}")
        names.add(host)
    return frozenset(names)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
