"""Reading a manifest file, bounded: the file size, YAML with the line of every key, the
nesting depth and alias expansion capped while the node tree is composed, ``${VAR}``
substitution, values nothing can run with (NaN, infinities, integers beyond 64 bits),
``--set`` overrides, and the problem and error types every manifest message is made of.

This is the part of ``quoteforge.manifest`` that knows YAML and no schema; the public
names are importable from ``quoteforge.manifest``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

__all__ = [
    "ENV_ONLY",
    "FROM_ENV",
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "DuplicateKeyError",
    "ManifestError",
    "ManifestProblem",
    "UnreadableError",
    "allowed_keys",
    "apply_overrides",
    "close_match",
    "describe_error",
    "explain",
    "key_lines",
    "literal_secrets",
    "parse_yaml",
    "read_text",
    "substitute_env",
    "unrepresentable",
]

#: A manifest file larger than this is refused unread (real ones are a few kB).
MAX_MANIFEST_BYTES = 1 << 20
#: Deepest nesting of mappings and lists a manifest may use.
MAX_DEPTH = 64
#: Most values YAML aliases (``*name``) may expand to in one manifest.
MAX_ALIAS_VALUES = 10_000
_INT64 = 1 << 63


@dataclass
class ManifestProblem:
    line: int | None
    path: str
    message: str


class ManifestError(Exception):
    """A manifest that cannot run; ``str()`` lists every problem with its line."""

    def __init__(self, source: str, problems: list[ManifestProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = []
        for p in problems:
            where = f"{source}:{p.line}" if p.line else source
            key = f" {p.path}:" if p.path else ""
            lines.append(f"{where}:{key} {p.message}")
        super().__init__("\n".join(lines))


# -- YAML with line numbers --------------------------------------------------------------


class UnreadableError(Exception):
    """The file cannot be read as a manifest; ``line`` is 1-based or None."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with the nesting depth and the alias expansion counted while the
    node tree is composed, before a Python object is built: aliases share one node, so
    a bomb costs nothing until something walks it, and the walk is what is capped."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._alias_values = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise UnreadableError(
                    line,
                    f"alias *{event.anchor} is used inside its own anchor &{event.anchor} "
                    "(a cycle); a manifest is a tree",
                )
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._alias_values += self._size(node)
                if self._alias_values > MAX_ALIAS_VALUES:
                    raise UnreadableError(
                        line,
                        f"YAML aliases expand to more than {MAX_ALIAS_VALUES} values; "
                        "write the values out or use fewer aliases",
                    )
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise UnreadableError(
                line, f"nested more than {MAX_DEPTH} levels deep; a manifest needs far fewer"
            )
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # A scalar the constructor cannot build: a date like 2024-13-45, an integer
            # of more than 4300 digits.
            message = str(exc).split(";")[0].split("\n")[0][:200]
            raise UnreadableError(node.start_mark.line + 1, f"bad value: {message}") from None

    def _size(self, node: yaml.Node) -> int:
        """Values ``node`` stands for once every alias below it is expanded."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size += sum(self._size(item) for item in node.value)
        self._sizes[id(node)] = size
        return size


def read_text(path: Path) -> str:
    """The file as text, refused when too large or not UTF-8."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise UnreadableError(None, "file not found") from None
    except IsADirectoryError:
        raise UnreadableError(None, "is a folder; pass the manifest file") from None
    except OSError as exc:
        raise UnreadableError(None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UnreadableError(
            None, f"larger than {MAX_MANIFEST_BYTES // 1024} KiB; a manifest is a few kB of YAML"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UnreadableError(
            line,
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
            "save the manifest as UTF-8",
        ) from None


def parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, bounded."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise UnreadableError(
            None, f"larger than {MAX_MANIFEST_BYTES // 1024} KiB; a manifest is a few kB of YAML"
        )
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:
        raise UnreadableError(
            text.count("\n", 0, exc.position) + 1,
            f"bad YAML: character U+{exc.character:04X} is not allowed in a YAML file",
        ) from None
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise UnreadableError(
            mark.line + 1 if mark else None, f"bad YAML: {exc.problem or exc.context}"
        ) from None
    except yaml.YAMLError as exc:
        raise UnreadableError(None, f"bad YAML: {exc}") from None
    finally:
        loader.dispose()
    return root, data


def unrepresentable(
    value: Any, path: tuple[str, ...], out: list[tuple[tuple[str, ...], str]]
) -> None:
    """Collect NaN, infinities and integers beyond 64 bits anywhere in the data."""
    if isinstance(value, dict):
        for k, v in value.items():
            unrepresentable(v, (*path, str(k)), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            unrepresentable(v, (*path, str(i)), out)
    elif isinstance(value, float) and not math.isfinite(value):
        out.append(
            (
                path,
                f"{value!r} is not a finite number; write a number (a literal above "
                "1.8e308 reads as infinity), or leave the key out for its default",
            )
        )
    elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        out.append((path, "integer out of range: a manifest value fits in 64 bits"))


def key_lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1, seen[key], path)
            seen[key] = key_node.start_mark.line + 1
            out[(*path, key)] = key_node.start_mark.line + 1
            key_lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key_lines(item, (*path, str(i)), out)


class DuplicateKeyError(Exception):
    def __init__(self, key: str, line: int, first: int, path: tuple[str, ...]) -> None:
        self.key, self.line, self.first, self.path = key, line, first, path


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
#: The values taken from the environment while a manifest is checked: never echoed.
FROM_ENV: ContextVar[frozenset[str]] = ContextVar("from_env", default=frozenset())


def substitute_env(
    value: Any, path: tuple[str, ...], problems: list[tuple[tuple[str, ...], str]], secrets: set
) -> Any:
    if isinstance(value, dict):
        return {k: substitute_env(v, (*path, str(k)), problems, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, (*path, str(i)), problems, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is not None:
                return default
            fallback = "" if "secrets" in path else f" (or write ${{{name}:-default}})"
            problems.append(
                (
                    path,
                    f"environment variable {name} is not set; export it before the run{fallback}",
                )
            )
            return ""
        if found:
            secrets.add(found)
        return found

    return _ENV.sub(replace, value)


#: Keys whose value is a secret wherever they appear; ``exchanges.<name>.secrets`` too.
SECRET_KEYS = frozenset({"password", "passphrase", "signing_key"})
#: A password inside a value: ``scheme://user:PASSWORD@host`` or libpq's ``password=...``.
_INLINE_PASSWORD = re.compile(r"://[^:/@\s]*:([^@\s]+)@|password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&]+)")
#: Header names whose value is a credential (``Authorization``, ``X-Api-Key``...).
_CREDENTIAL = re.compile(r"(?i)auth|cookie|token|key|secret|signature|password|session")
_FROM_ENV = "a secret must come from the environment: write ${SOME_VAR} and export SOME_VAR, "


def literal_secrets(
    value: Any, path: tuple[str, ...], problems: list[tuple[tuple[str, ...], str]]
) -> None:
    """Secrets written into the manifest or ``--set`` instead of read from ``${VAR}`` (both
    are copied into the run folder): checked before ``${VAR}`` substitution."""
    if isinstance(value, dict):
        for k, v in value.items():
            literal_secrets(v, (*path, str(k)), problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            literal_secrets(v, (*path, str(i)), problems)
    elif (len(path) == 4 and path[0] == "exchanges" and path[2] == "secrets") or (
        path[-1:] and path[-1] in SECRET_KEYS and value is not None
    ):
        if not (isinstance(value, str) and ENV_ONLY.fullmatch(value.strip())):
            problems.append((path, _FROM_ENV + "never the value itself"))
    elif path[-2:-1] == ("headers",) and _CREDENTIAL.search(path[-1]):
        if not (isinstance(value, str) and _ENV.search(value)):
            problems.append((path, "a credential header; " + _FROM_ENV + 'e.g. "Bearer ${T}"'))
    elif isinstance(value, str):
        for match in _INLINE_PASSWORD.finditer(value):
            if not ENV_ONLY.fullmatch((match.group(1) or match.group(2)).strip("'")):
                problems.append(
                    (path, _FROM_ENV + "for the password part, never the password itself")
                )
                return


def _parse_scalar(text: str) -> Any:
    if not text.strip():
        return ""
    try:
        return parse_yaml(text)[1]
    except UnreadableError as exc:
        shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
        raise ManifestError("--set", [ManifestProblem(None, shown, exc.message)]) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to the raw manifest."""
    for item in overrides:
        if "=" not in item:
            raise ManifestError(
                "--set", [ManifestProblem(None, item, "expected KEY.PATH=VALUE, e.g. run.seed=7")]
            )
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ManifestError("--set", [ManifestProblem(None, item, "empty key path")])
        if len(keys) > MAX_DEPTH:
            raise ManifestError(
                "--set",
                [ManifestProblem(None, dotted[:80], f"a key path has at most {MAX_DEPTH} parts")],
            )
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    here = ".".join(keys[: depth + 1])
                    raise ManifestError("--set", [ManifestProblem(None, here, "no such list item")])
                node = node[int(key)]
                continue
            if not isinstance(node, dict):
                here = ".".join(keys[:depth])
                raise ManifestError(
                    "--set", [ManifestProblem(None, here, "is not a mapping, cannot set below it")]
                )
            node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ManifestError(
                "--set", [ManifestProblem(None, ".".join(keys[:-1]), "is not a mapping")]
            )
        node[keys[-1]] = _parse_scalar(raw)


def describe_error(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required value is missing"
    msg = str(err.get("msg", "invalid value"))
    got = err.get("input")
    if kind not in ("missing",) and not isinstance(got, dict | list) and got is not None:
        shown = repr(got)
        text = str(got)  # (maybe) a secret: never shown
        if any(v == text or (len(v) >= 6 and v in text) for v in FROM_ENV.get()):
            return f"{msg}; got a value from the environment (not shown)"
        if len(shown) > 80:
            shown = f"{shown[:60]}... ({len(shown)} characters)"
        said = msg.endswith(f"got {shown}") or kind == "number_from_boolean"  # says it
        return msg if said else f"{msg}; got {shown}"
    return msg


def allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(sorted(model.model_fields))


def close_match(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the choice nearest ``word``, or ""."""
    guess = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean {guess[0]!r}?)" if guess else ""


def explain(err: Any, model: type[BaseModel], lead: str = "expected one of") -> str:
    """``describe_error``, and for a key the model at that place does not take, the
    nearest one it takes and all of them (after ``lead`` at the top level)."""
    loc = tuple(str(p) for p in err["loc"])
    owner = _model_at(model, loc[:-1]) if err["type"] == "extra_forbidden" else None
    if owner is None:
        return describe_error(err)
    lead = lead if len(loc) == 1 else "expected one of"
    hint = close_match(loc[-1], owner.model_fields)
    return f"unknown key{hint}; {lead}: {allowed_keys(owner) or 'no params'}"


def _model_at(model: type[BaseModel], path: tuple[str, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``path`` below ``model`` (through fields,
    optional values, and the keys and items of dicts and lists), or None."""
    ann: Any = model
    steps = list(path)
    while ann is not None:
        inner = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = inner[0] if len(inner) == 1 else None
        elif typing.get_origin(ann) in (dict, list) and steps:
            ann, _ = inner[-1], steps.pop(0)
        elif not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        elif not steps:
            return ann
        else:
            ann = getattr(ann.model_fields.get(steps.pop(0)), "annotation", None)
    return None
