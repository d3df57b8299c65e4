"""Reports and the live dashboard of a run (extras ``report`` and ``dashboard``).

This package is the plugin's entry point: it registers the ``report`` and ``dashboard``
commands and writes the end-of-run report for ``quoteforge run``. Loading it imports
nothing heavy; ``render`` and ``dashboard`` (numpy, and plotly, matplotlib or aiohttp
when they draw or serve) are imported when a command or a report needs them, so a
missing extra is reported by the command that needs it, with the pip command.
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from quoteforge import hookimpl
from quoteforge.registry import RegisterCommand

__all__ = ["dashboard_command", "report_command"]

_INSTALL = 'pip install "quoteforge[report]"'


def report_command(argv: list[str]) -> int:
    """``quoteforge report RUN_DIR``."""
    from quoteforge.plugins.report.render import report_main

    return report_main(argv)


def dashboard_command(argv: list[str]) -> int:
    """``quoteforge dashboard RUN_DIR_OR_JOURNAL``."""
    from quoteforge.plugins.report.dashboard import dashboard_main

    return dashboard_main(argv)


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "report",
        report_command,
        help="(re)write the HTML and PNG report of a run folder",
        requires=("matplotlib", "plotly"),
    )
    register(
        "dashboard",
        dashboard_command,
        help="live web dashboard of a run folder (or its journal) as it grows",
        requires=("aiohttp", "plotly"),
    )


@hookimpl
def quoteforge_write_report(run_dir: Path, html: bool, png: bool) -> list[Path]:
    """The report a run's manifest asks for (``report.html``, ``report.png``). Without the
    report extra the run still ends normally: the log says what to install and the report
    can be written later with ``quoteforge report RUN_DIR``."""
    try:
        from quoteforge.plugins.report.render import write_report
    except ImportError as exc:
        logger.warning("report not written ({}); install it with: {}", exc, _INSTALL)
        return []
    try:
        return write_report(run_dir, html=html, png=png)
    except ModuleNotFoundError as exc:
        logger.warning("report not written (missing {}); install it with: {}", exc.name, _INSTALL)
        return []
    except Exception as exc:  # a report failure never loses the run's data
        logger.opt(exception=exc).error("report failed: {}; the run folder is intact", exc)
        return []
