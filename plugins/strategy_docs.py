"""The strategy API reference, generated from the docstrings of the classes a strategy
author uses: ``Market``, ``Instrument``, ``StrategyContext`` and ``Strategy``.

    python -m quoteforge.plugins.strategy_docs > docs/strategies/reference.md

Methods and properties are documented by their docstrings; attributes by a ``#:``
comment on the line(s) just above where they are declared (a dataclass field, a class
attribute, or the first ``self.name = ...`` in ``__init__``). ``undocumented()`` lists
what has neither, and tests/test_strategy_docs.py fails on it and on a stale file.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

from quoteforge.model import Instrument
from quoteforge.strategy import Market, Strategy, StrategyContext

__all__ = ["CLASSES", "Member", "main", "members", "reference", "undocumented"]

#: The documented classes, in the reference's order, with the name an instance goes by.
CLASSES: tuple[tuple[type, str], ...] = (
    (Market, "market"),
    (Instrument, "market.instrument"),
    (StrategyContext, "self.ctx"),
    (Strategy, "self"),
)

COMMAND = "python -m quoteforge.plugins.strategy_docs > docs/strategies/reference.md"


@dataclass(frozen=True)
class Member:
    """One public member of a documented class."""

    name: str
    kind: str  # "attribute", "property" or "method"
    signature: str  # "(price: float | Decimal, side: Side | None = None) -> int", ": int"
    doc: str


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    return value if isinstance(value, str) else inspect.formatannotation(value)


def _signature(fn: Any) -> str:
    sig = inspect.signature(fn)
    parts: list[str] = []
    star_done = False
    for param in list(sig.parameters.values())[1:]:  # without self
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text, star_done = "*" + text, True
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        elif param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        ann = _annotation(param.annotation)
        if ann:
            text += f": {ann}"
        if param.default is not param.empty:
            text += f" = {param.default!r}" if ann else f"={param.default!r}"
        parts.append(text)
    ret = _annotation(sig.return_annotation)
    return f"({', '.join(parts)})" + (f" -> {ret}" if ret else "")


def _attribute_comments(cls: type) -> dict[str, tuple[str, str]]:
    """Public attributes declared in ``cls``'s source: name -> (type, ``#:`` comment)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source).body[0]
    assert isinstance(tree, ast.ClassDef)
    found: dict[str, tuple[str, str]] = {}
    init = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    # ``self.book = book``: the attribute has the type of the argument it is set from.
    arg_types = {
        a.arg: a.annotation
        for a in (init.args.args + init.args.kwonlyargs if init else [])
        if a.annotation is not None
    }

    def note(
        target: ast.expr, annotation: ast.expr | None, value: ast.expr | None, lineno: int
    ) -> None:
        if isinstance(target, ast.Name):
            name = target.id
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            name = target.attr
        else:
            return
        if name.startswith("_") or name in found:
            return
        comment: list[str] = []
        row = lineno - 2
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        if annotation is None and isinstance(value, ast.Name):
            annotation = arg_types.get(value.id)
        kind = ast.unparse(annotation) if annotation is not None else ""
        found[name] = (kind, " ".join(comment))

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.AnnAssign):
                note(node.target, node.annotation, node.value, node.lineno)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    note(target, None, node.value, node.lineno)

    visit(tree.body)
    if init is not None:
        visit(init.body)
    return found


def _is_routine(value: Any) -> bool:
    return inspect.isfunction(value) or isinstance(value, property | classmethod | staticmethod)


def members(cls: type) -> list[Member]:
    """The public members of ``cls`` (its own, in source order)."""
    out: list[Member] = []
    comments = _attribute_comments(cls)
    public_slots = [s for s in getattr(cls, "__slots__", ()) if not s.startswith("_")]
    fields = (
        [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        if dataclasses.is_dataclass(cls)
        else []
    )
    for name in dict.fromkeys([*comments, *fields, *public_slots]):
        if _is_routine(vars(cls).get(name)):
            continue
        kind, doc = comments.get(name, ("", ""))
        out.append(Member(name, "attribute", f": {kind}" if kind else "", doc))
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            ret = _annotation(inspect.signature(value.fget).return_annotation)  # type: ignore[arg-type]
            doc = inspect.getdoc(value) or ""
            out.append(Member(name, "property", f": {ret}" if ret else "", doc))
        elif inspect.isfunction(value) or isinstance(value, classmethod | staticmethod):
            fn = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            doc = inspect.getdoc(fn) or ""
            out.append(Member(name, "method", _signature(fn), doc))
    return out


def undocumented(classes: tuple[tuple[type, str], ...] = CLASSES) -> list[str]:
    """``Class.member`` for every public member without a docstring or ``#:`` comment
    (and ``Class`` itself when it has no docstring)."""
    missing = []
    for cls, _ in classes:
        if not (cls.__doc__ or "").strip():
            missing.append(cls.__name__)
        missing += [f"{cls.__name__}.{m.name}" for m in members(cls) if not m.doc.strip()]
    return missing


def _section(cls: type, instance: str) -> list[str]:
    out = [f"## `{cls.__name__}`", "", inspect.cleandoc(cls.__doc__ or ""), ""]
    attrs = [m for m in members(cls) if m.kind == "attribute"]
    if attrs:
        out += ["| Attribute | Type | Meaning |", "|---|---|---|"]
        for m in attrs:
            kind = f"`{m.signature[2:]}`".replace("|", "\\|") if m.signature else ""
            text = m.doc.replace("|", "\\|")
            out.append(f"| `{instance}.{m.name}` | {kind} | {text} |")
        out.append("")
    for m in members(cls):
        if m.kind == "attribute":
            continue
        label = " (property)" if m.kind == "property" else ""
        out += [f"### `{instance}.{m.name}{m.signature}`{label}", "", m.doc, ""]
    return out


def reference() -> str:
    """The whole of docs/strategies/reference.md."""
    lines = [
        "# Strategy API reference",
        "",
        "<!-- Generated from the docstrings; do not edit. Regenerate with:",
        f"     {COMMAND} -->",
        "",
        "What a strategy is handed and can call, generated from the docstrings of "
        "`quoteforge.Market`, `quoteforge.Instrument`, `quoteforge.StrategyContext` and "
        "`quoteforge.Strategy` (tests/test_strategy_docs.py fails when one of their public "
        "members is undocumented or this file is stale). The guide that puts them together "
        "is [authoring.md](authoring.md). Prices are integer ticks and quantities integer "
        "lots unless a name says otherwise.",
        "",
    ]
    for cls, instance in CLASSES:
        lines += _section(cls, instance)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    """Print the reference (``python -m quoteforge.plugins.strategy_docs``)."""
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
