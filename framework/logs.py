"""Logging setup: loguru with a human terminal format, an optional JSON-lines sink, and
a filter that redacts every secret before any sink sees it."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = ["Redactor", "configure_logging", "redactor"]

_SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|PASSPHRASE|TOKEN|PRIVATE)", re.IGNORECASE)
MASK = "***"


class Redactor:
    """Replaces known secret values in text. Secrets come from the manifest's
    ``${ENV}`` substitutions and from environment variables whose names look secret."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(v for k, v in os.environ.items() if _SECRET_ENV.search(k))

    def add(self, values: Iterable[str]) -> None:
        # Very short values would mask ordinary words; venues' keys are long.
        fresh = {v for v in values if v and len(v) >= 6} - self._secrets
        if not fresh:
            return
        self._secrets |= fresh
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def patch(self, record: Any) -> None:
        record["message"] = self(record["message"])
        if record["exception"] is not None:
            exc = record["exception"]
            if exc.value is not None and self._pattern is not None:
                text = str(exc.value)
                if self._pattern.search(text):
                    record["message"] += f" [{type(exc.value).__name__}: {self(text)}]"
                    record["exception"] = None


redactor = Redactor()


def configure_logging(
    level: str = "INFO",
    *,
    json_path: Path | None = None,
    run_id: str = "-",
    secrets: Iterable[str] = (),
) -> None:
    """Terminal sink (human format) and, with ``json_path``, a JSON-lines sink.

    Every record carries ``run`` and ``component`` so lines from several nodes can be
    told apart.
    """
    redactor.add(secrets)
    logger.remove()
    logger.configure(extra={"run": run_id, "component": "quoteforge"}, patcher=redactor.patch)
    fmt = (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{extra[component]}</cyan> {message}"
    )
    # diagnose=False: loguru would print local variables (a token, say) inside tracebacks,
    # after the redacting patcher has run.
    logger.add(sys.stderr, level=level, format=fmt, colorize=None, backtrace=False, diagnose=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            json_path, level="DEBUG", serialize=True, enqueue=True, backtrace=False, diagnose=False
        )
