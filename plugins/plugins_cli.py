"""``quoteforge plugins``: what the installed plugins provide (types, commands, hooks)
and which failed to load, and ``--hooks``, the hook reference generated from the
hookspec docstrings."""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

from quoteforge import hookimpl, hookspecs
from quoteforge.registry import KINDS, PluginRegistry, RegisterCommand, load_registry

__all__ = ["hooks_reference", "plugin_rows", "plugins_main"]

EXIT_OK = 0


def plugins_main(argv: list[str]) -> int:
    """``quoteforge plugins [--json] [--hooks]``."""
    p = argparse.ArgumentParser(
        prog="quoteforge plugins", description="list discovered plugins and what they provide"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--hooks", action="store_true", help="print the hook reference (Markdown) instead"
    )
    args = p.parse_args(argv)
    if args.hooks:
        print(hooks_reference())
        return EXIT_OK
    from quoteforge.logs import configure_logging

    configure_logging("ERROR")
    registry = load_registry()
    rows = plugin_rows(registry)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    header = ("NAME", "KIND", "PLUGIN", "DISTRIBUTION", "STATUS")
    table = [header] + [
        (r["name"], r["kind"], r["plugin"], f"{r['dist']} {r['version']}".strip(), r["status"])
        for r in rows
    ]
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    for t in table:
        print("  ".join(v.ljust(widths[i]) for i, v in enumerate(t[:4])) + "  " + t[4])
    return EXIT_OK


def plugin_rows(registry: PluginRegistry) -> list[dict[str, str]]:
    """One row per registered type and per plugin command, one per plugin that only
    observes (by the hooks it implements), and one per plugin that failed to load."""
    by_plugin = {r.name: r for r in registry.records}
    rows: list[dict[str, str]] = []
    keys = ("name", "kind", "plugin", "dist", "version", "status", "description")

    def add(kind: str, name: str, plugin: str, record: Any, status: str, about: str) -> None:
        dist, version = (record.dist, record.version) if record else ("", "")
        rows.append(
            dict(zip(keys, (name, kind, plugin, dist, version, status, about), strict=True))
        )

    for kind in KINDS:
        for name, reg in sorted(registry.types(kind).items()):
            status = "ok" if reg.loadable else f"needs: {reg.install_hint}"
            add(kind, name, reg.plugin, by_plugin.get(reg.plugin), status, reg.description)
    for name, command in sorted(registry.commands.items()):
        status = "ok" if command.loadable else f"needs: {command.install_hint}"
        add("command", name, command.plugin, by_plugin.get(command.plugin), status, command.help)
    for record in registry.records:
        if not record.loaded or record.provides:
            continue
        # A plugin that only observes (metrics, alert hooks) registers no type: list it
        # by the hooks it implements.
        plugin = registry.pm.get_plugin(record.name)
        hooks = sorted(
            caller.name for caller in registry.pm.get_hookcallers(plugin) or [] if plugin
        )
        add("hooks", record.name, record.name, record, "ok", ", ".join(hooks))
    for record in registry.failed_plugins():
        status = (
            f"needs: {record.install_hint}" if record.install_hint else f"broken: {record.error}"
        )
        add("?", record.name, record.name, record, status, record.error)
    return rows


def hooks_reference() -> str:
    """The hook reference in Markdown, generated from the hookspec docstrings."""
    lines = [
        "# Hook reference",
        "",
        "Generated from `quoteforge.hookspecs` by `quoteforge plugins --hooks`. Implement",
        "these in a module named by a `quoteforge` entry point, decorated with",
        "`@quoteforge.hookimpl`.",
        "",
    ]
    for name in hookspecs.__all__:
        fn = getattr(hookspecs, name)
        sig = str(inspect.signature(fn)).replace("'", "")
        lines += [f"## `{name}{sig}`", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(lines)


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "plugins",
        plugins_main,
        help="list discovered plugins and what they provide (--hooks: the hook reference)",
    )
