"""Position-aware YAML loading and validation shared by recipes and target profiles.

Every problem a user can make in a YAML file becomes a `Diagnostic` that knows the file, line,
column and dotted field path, so the CLI can print ``PATH:LINE:COL: error: field.path: message``
(the format compilers use, which editors turn into clickable links). Pydantic does the typing;
this module maps its error locations back onto the ruamel.yaml node positions and adds the
"did you mean ...?" suggestions. Nothing here raises anything but `ConfigError`.
"""

from __future__ import annotations

import difflib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a configuration file, positioned for a human and an editor."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: error: {self.field}: {self.message}"


class ConfigError(Exception):
    """A recipe or profile is invalid; carries every diagnostic found, not just the first."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ``' (did you mean "x"?)'`` for the closest choice, or an empty string."""
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def dotted(loc: Loc) -> str:
    """``('deploy', 'rpi4', 'hosts', 0)`` -> ``deploy.rpi4.hosts[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


# ---------------------------------------------------------------------------------------------
# Loading


def _yaml() -> YAML:
    yaml = YAML(typ="rt")  # round-trip keeps node positions; it never constructs arbitrary objects
    yaml.allow_duplicate_keys = False
    return yaml


def load_yaml(text: str, filename: str) -> Any:
    """Parse YAML text into ruamel's position-carrying containers or raise ConfigError."""
    try:
        return _yaml().load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([Diagnostic(filename, line, col, "yaml", problem or "invalid YAML")]) from None
    except YAMLError as exc:
        raise ConfigError([Diagnostic(filename, 1, 1, "yaml", str(exc).strip())]) from None


def read_yaml_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Diagnostic(str(path), 1, 1, "file", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Diagnostic(str(path), 1, 1, "file", f"cannot read: {exc}")]) from None
    return load_yaml(text, str(path))


def to_plain(node: Any) -> Any:
    """ruamel containers -> plain dicts/lists (pydantic validates plain data)."""
    if isinstance(node, Mapping):
        return {str(k) if not isinstance(k, str) else k: to_plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [to_plain(v) for v in node]
    if type(node).__module__.startswith("ruamel"):
        # ScalarFloat, ScalarBoolean, TaggedScalar ... -> their plain Python value
        for base in (bool, int, float, str):
            if isinstance(node, base):
                return base(node)
        return str(node)
    return node


# ---------------------------------------------------------------------------------------------
# Positions


class Positions:
    """Finds the line/column of a field path inside a parsed document.

    ``overrides`` maps dotted paths set on the command line (``--set``) to the text the user typed,
    so an error in an override points at the override rather than at a line of the file.
    """

    def __init__(self, root: Any, filename: str, overrides: Mapping[str, str] | None = None):
        self.root = root
        self.filename = filename
        self.overrides = dict(overrides or {})

    def locate(self, loc: Loc, *, key: bool = False) -> tuple[str, int, int]:
        path = dotted(loc)
        for set_path, text in self.overrides.items():
            below = path.startswith(set_path + ".") or path.startswith(set_path + "[")
            above = set_path.startswith(path + ".")  # a mapping the override created
            if path == set_path or below or above:
                return f"--set {text}", 0, 0
        node = self.root
        line, col = 1, 1
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, CommentedMap) and part in node:
                pos = _position(node, part, key=key and last)
                if pos is not None:
                    line, col = pos[0] + 1, pos[1] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                pos = _position(node, part)
                if pos is not None:
                    line, col = pos[0] + 1, pos[1] + 1
                node = node[part]
            else:
                # A missing field: point at its parent mapping (its first key) when we have one.
                if isinstance(node, CommentedMap | CommentedSeq) and i > 0 and node.lc.line is not None:
                    line, col = node.lc.line + 1, node.lc.col + 1
                break
        return self.filename, line, col

    def diagnostic(self, loc: Loc, message: str, *, key: bool = False) -> Diagnostic:
        file, line, col = self.locate(loc, key=key)
        return Diagnostic(file, line, col, dotted(loc), message)


def _position(node: Any, part: str | int, *, key: bool = False) -> tuple[int, int] | None:
    """ruamel's recorded position of a key/value/item; None for nodes made in memory (--set)."""
    try:
        if isinstance(node, CommentedSeq):
            return node.lc.item(part)
        return node.lc.key(part) if key else node.lc.value(part)
    except (KeyError, AttributeError, TypeError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# Pydantic errors -> diagnostics


def _field_names_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The field names a pydantic model accepts at ``loc`` (for "did you mean" on unknown keys)."""
    current: Any = model
    for part in loc:
        current = _child_type(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _child_type(tp: Any, part: str | int) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        return field.annotation if field else None
    if origin in (list, tuple, Sequence) and isinstance(part, int):
        args = get_args(tp)
        return args[0] if args else None
    if origin in (dict, Mapping):
        args = get_args(tp)
        return args[1] if len(args) == 2 else None
    # Optional[X] / X | None / unions: take the first BaseModel-ish member that has the child
    for arg in get_args(tp):
        if arg is type(None):
            continue
        child = _child_type(arg, part)
        if child is not None:
            return child
    return None


def diagnostics_from_validation(
    exc: ValidationError, model: type[BaseModel], positions: Positions, prefix: Loc = ()
) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            known = _field_names_at(model, loc[len(prefix) : -1])
            msg = f"unknown key {str(loc[-1])!r}{suggest(str(loc[-1]), known)}"
            if known:
                msg += f"; allowed: {', '.join(known)}"
            diag = positions.diagnostic(loc, msg, key=True)
        elif kind in ("literal_error", "enum"):
            expected = _expected_values(err)
            given = err.get("input")
            msg = f"{given!r} is not one of {', '.join(expected)}{suggest(str(given), expected)}"
            diag = positions.diagnostic(loc, msg)
        elif kind == "missing":
            diag = positions.diagnostic(loc, "required field is missing")
        else:
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            elif msg.startswith("Input should be"):
                given = err.get("input")
                msg = "should be" + msg[len("Input should be") :]
                if isinstance(given, str | int | float | bool) or given is None:
                    msg += f" (got {given!r})"
            diag = positions.diagnostic(loc, msg)
        marker = (diag.field, diag.message)
        if marker not in seen:
            seen.add(marker)
            out.append(diag)
    return out


def _expected_values(err: Mapping[str, Any]) -> list[str]:
    ctx = err.get("ctx") or {}
    expected = str(ctx.get("expected", ""))
    # pydantic writes "'a', 'b' or 'c'"
    parts = [p.strip().strip("'\"") for p in expected.replace(" or ", ", ").split(",")]
    return [p for p in parts if p]


def literal_values(tp: Any) -> list[str]:
    """The allowed strings of a Literal type (used by docs and suggestions)."""
    if get_origin(tp) is Literal:
        return [str(a) for a in get_args(tp)]
    return []


def validate_document(
    model: type[BaseModel],
    data: Any,
    positions: Positions,
    context: dict[str, Any] | None = None,
) -> Any:
    """Validate plain data against ``model``; every error becomes a positioned Diagnostic."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(
            [Diagnostic(positions.filename, 1, 1, "(root)", f"expected a mapping of keys, got {kind}")]
        )
    try:
        return model.model_validate(to_plain(data), context=context)
    except ValidationError as exc:
        raise ConfigError(diagnostics_from_validation(exc, model, positions)) from None


def stable_hash(value: Any) -> str:
    """A short sha256 of a JSON-able value, key order independent (stage keys, recipe hash)."""
    import hashlib

    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
