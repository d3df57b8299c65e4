"""The shape of the code base (issue #15, "A small kernel"): file sizes, the kernel's
size, the import direction and what ``import quoteforge`` costs.

Each check prints the offending files or modules, so a failure says what to split,
move or list instead of only that a limit was crossed.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import quoteforge

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORK = ROOT / "framework"

MAX_FILE_LINES = 800
MAX_KERNEL_PYTHON_LINES = 10_000

#: Files the line limit does not apply to: the tests, C sources (a parser reads best as
#: one file), and data: recordings, images, exported dashboards, benchmark results.
EXEMPT_DIRS = ("tests/",)
EXEMPT_SUFFIXES = (".c", ".h", ".gz", ".jsonl", ".json", ".csv", ".png", ".svg", ".lock")

#: Directories never walked when git cannot list the tracked files.
_SKIP_DIRS = {".git", "build", "dist", "runs", "venv", "wheel-venv", "__pycache__"}

#: The kernel's layer in the import contract (setup.cfg, checked by lint-imports).
CONTRACT = "importlinter:contract:kernel-below-plugins"
PLUGIN_PACKAGES = ("exchanges", "plugins", "strategies")
#: Packages above the plugin packages (they may import everything below; nothing imports them).
TOP_PACKAGES = ("gym",)


def source_files() -> list[Path]:
    """The repository's files (tracked or new, not ignored), relative to the root."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for top, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
            names += [str(Path(top, f).relative_to(ROOT)) for f in files]
    return sorted(Path(n) for n in names if (ROOT / n).is_file())


def line_count(path: Path) -> int:
    with open(ROOT / path, "rb") as f:
        return sum(1 for _ in f)


def kernel_modules_on_disk() -> set[str]:
    """Children of the ``quoteforge`` package that live in framework/: its modules and
    subpackages (quoteforge.book). Compiled extensions have no Python to check."""
    modules = {p.stem for p in FRAMEWORK.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in FRAMEWORK.glob("*/__init__.py")}
    return modules


def kernel_layer_in_contract() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    layers = [line.strip() for line in config[CONTRACT]["layers"].splitlines() if line.strip()]
    assert len(layers) >= 2, "the contract has the plugin packages over the kernel"
    # Above the plugin packages there may be the learning environment, which nothing imports.
    assert layers[:-2] in ([], list(TOP_PACKAGES)), f"the layers above the plugins: {layers}"
    top = {m.strip() for m in layers[-2].split(":")}
    assert top == set(PLUGIN_PACKAGES), f"the plugin packages' layer is {layers[-2]!r}"
    return {m.strip().strip("()") for m in layers[-1].split(":")}


def test_no_file_over_800_lines_outside_tests_and_c() -> None:
    too_long = []
    for path in source_files():
        name = path.as_posix()
        if name.startswith(EXEMPT_DIRS) or name.endswith(EXEMPT_SUFFIXES):
            continue
        lines = line_count(path)
        if lines > MAX_FILE_LINES:
            too_long.append(f"{lines:6d}  {name}")
    assert not too_long, f"files over {MAX_FILE_LINES} lines (split them):\n" + "\n".join(
        sorted(too_long, reverse=True)
    )


def test_kernel_is_at_most_10k_lines_of_python() -> None:
    counts = {
        p.relative_to(ROOT).as_posix(): line_count(p.relative_to(ROOT))
        for p in FRAMEWORK.rglob("*.py")
    }
    total = sum(counts.values())
    biggest = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
    listing = "\n".join(f"{n:6d}  {name}" for name, n in biggest)
    assert total <= MAX_KERNEL_PYTHON_LINES, (
        f"framework/ holds {total} lines of Python (limit {MAX_KERNEL_PYTHON_LINES}); "
        f"the largest files:\n{listing}"
    )


def test_every_kernel_module_is_in_the_import_contract() -> None:
    """The layers contract is exhaustive, so lint-imports fails on an unlisted module;
    this names it (and a stale entry) without running the linter."""
    on_disk = kernel_modules_on_disk()
    listed = kernel_layer_in_contract()
    missing = sorted(on_disk - listed)
    stale = sorted(listed - on_disk)
    assert not missing, f"add to the kernel layer of [{CONTRACT}] in setup.cfg: {missing}"
    assert not stale, f"remove from the kernel layer of [{CONTRACT}] in setup.cfg: {stale}"
    assert not on_disk & set(PLUGIN_PACKAGES)


def test_import_contracts_are_kept() -> None:
    """The kernel imports no exchange, plugin or strategy (not even inside a function);
    strategies never import exchanges; plugins never import strategies."""
    lint = shutil.which("lint-imports")
    if lint is None:
        message = 'import-linter is not installed: pip install -e ".[dev]"'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_plugin_author_names_are_exported() -> None:
    """Everything a plugin author types comes from ``quoteforge``; the lazily loaded
    names resolve, and only from kernel modules."""
    for name in quoteforge.__all__:
        assert getattr(quoteforge, name) is not None, name
    for name in ("Register", "BookState", "L2Book", "ExchangeAdapter", "VenueContext"):
        assert name in quoteforge.__all__
    for name in ("VenueSink", "RiskCheck", "RiskView", "ExecutionPolicy", "Journal", "Bus"):
        assert name in quoteforge.__all__
    for name in ("PluginError", "NoParams", "hookimpl", "INTERFACE_VERSION"):
        assert name in quoteforge.__all__
    lazy: dict[str, str] = vars(quoteforge)["_LAZY"]
    assert set(lazy) <= set(quoteforge.__all__)
    for name, module in lazy.items():
        assert not module.startswith(tuple(f"quoteforge.{p}" for p in PLUGIN_PACKAGES)), name
        assert getattr(sys.modules[module], name) is getattr(quoteforge, name)
    from quoteforge.registry import Register

    assert quoteforge.Register is Register


def test_import_quoteforge_stays_cheap() -> None:
    """``import quoteforge`` loads the model and the strategy API, not the registry,
    the book, logging, asyncio or any plugin: those load when a name from them is used."""
    code = "import json, sys, quoteforge; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    heavy = {"asyncio", "loguru", "numpy", "yaml", "quoteforge.registry", "quoteforge.book"}
    heavy |= {f"quoteforge.{p}" for p in (*PLUGIN_PACKAGES, *TOP_PACKAGES)}
    assert not loaded & heavy, sorted(loaded & heavy)


def private_overrides() -> list[str]:
    """Every one-underscore method (not a dunder, not ``_abc_impl``, an ABC internal every
    subclass gets) that a class of the ``quoteforge`` package defines over a base class
    from another quoteforge module, as ``module.Class.name overrides module.Base``.
    Modules whose optional extra is not installed are skipped."""
    names = ["quoteforge"]
    names += [m.name for m in pkgutil.walk_packages(quoteforge.__path__, "quoteforge.")]
    offenders = []
    seen: set[type] = set()
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != name or cls in seen:
                continue
            seen.add(cls)
            for attr in vars(cls):
                if not attr.startswith("_") or attr.startswith("__") or attr == "_abc_impl":
                    continue
                for base in cls.__mro__[1:]:
                    if (
                        attr in vars(base)
                        and base.__module__ != name
                        and base.__module__.split(".")[0] == "quoteforge"
                    ):
                        where = f"{base.__module__}.{base.__qualname__}"
                        offenders.append(f"{name}.{cls.__qualname__}.{attr} overrides {where}")
                        break
    return sorted(offenders)


def test_no_class_overrides_another_modules_private_methods() -> None:
    """A hook a base class expects subclasses in other modules to override is public and
    documented on the base (``send_place``, ``reset_stream``, ``write_batch`` ...): a
    one-underscore name overridden across modules is an extension point in disguise.
    Overrides within one module stay private to it.

    The check imports every module, so it runs in a fresh interpreter: this process's
    ``sys.modules`` stays as the other tests expect it."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import test_architecture; print(json.dumps(test_architecture.private_overrides()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    offenders = json.loads(out.strip().splitlines()[-1])
    assert not offenders, (
        "make these hooks public on the base (a name that says what they do, a docstring "
        "saying subclasses implement or override them):\n" + "\n".join(offenders)
    )
