"""Packaging guards: every package folder is mapped in setup.cfg, every entry point
resolves, and the hook reference in docs/ matches the hook specifications."""

from __future__ import annotations

import configparser
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from quoteforge import hookspecs
from quoteforge.plugins.plugins_cli import hooks_reference

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "framework": "quoteforge",
    "exchanges": "quoteforge.exchanges",
    "strategies": "quoteforge.strategies",
    "plugins": "quoteforge.plugins",
}


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    cfg = setup_cfg()
    packages = set(cfg["options"]["packages"].split())
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, folder = (part.strip() for part in line.split("="))
        mapping[name] = folder
    # A folder may be mapped under a name of its own (plugins/gym = quoteforge.gym).
    named = {folder: name for name, folder in mapping.items()}
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts]) if rel.parts else package
            name = named.get(str(init.parent.relative_to(ROOT)), name)
            found.add(name)
            assert name in packages, (
                f"{init.parent} holds package {name}, missing from setup.cfg packages"
            )
            assert mapping.get(name) == str(init.parent.relative_to(ROOT)), (
                f"setup.cfg package_dir must map {name} = {init.parent.relative_to(ROOT)}"
            )
    assert packages == found, f"setup.cfg lists packages with no folder: {packages - found}"


def test_every_builtin_entry_point_imports() -> None:
    cfg = setup_cfg()
    declared = [
        line.split("=")[0].strip()
        for line in cfg["options.entry_points"]["quoteforge"].strip().splitlines()
    ]
    installed = {
        ep.name: ep
        for ep in metadata.entry_points(group="quoteforge")
        if ep.dist is not None and ep.dist.name == "quoteforge"
    }
    assert sorted(declared) == sorted(installed), "reinstall: pip install -e .[dev]"
    for name in declared:
        installed[name].load()


def test_hook_reference_is_complete_and_current() -> None:
    doc = (ROOT / "docs" / "hooks.md").read_text()
    for name in hookspecs.__all__:
        fn = getattr(hookspecs, name)
        assert f"## `{name}(" in doc, f"docs/hooks.md has no entry for {name}"
        text = fn.__doc__ or ""
        for part in ("versionadded", ":param"):
            assert part in text or "(run" in text, f"{name} docstring lacks {part}"
        assert "Called" in text, f"{name} docstring must say when it is called"
    assert doc.strip() == hooks_reference().strip(), (
        "docs/hooks.md is stale: quoteforge plugins --hooks > docs/hooks.md"
    )
    specs = {n for n in dir(hookspecs) if n.startswith("quoteforge_")}
    assert specs == set(hookspecs.__all__), "every hookspec must be in hookspecs.__all__"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*_bench.py")))
def test_every_benchmark_imports_what_it_measures(script: str) -> None:
    """A module that moves must not leave a benchmark behind: each one imports its
    subjects at the top, so ``--help`` fails the moment an import is stale."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
