"""Position-aware YAML loading and validation shared by recipes and target profiles.

Every problem a user can make in a YAML file becomes a `Diagnostic` that knows the file, line,
column and dotted field path, so the CLI can print ``PATH:LINE:COL: error: field.path: message``
(the format compilers use, which editors turn into clickable links). Pydantic does the typing;
this module maps its error locations back onto the ruamel.yaml node positions and adds the
"did you mean ...?" suggestions. Nothing here raises anything but `ConfigError`.

Recipes arrive in pull requests from strangers, so every YAML document (a recipe, a profile, a
``--set`` value) is bounded before and while it is parsed: its size (`MAX_YAML_BYTES`, checked
before parsing; a stream is never read past it), its nesting depth (`MAX_YAML_DEPTH`) and the
number of nodes it expands to once every alias and merge key is followed (`MAX_YAML_NODES`, the
"billion laughs" bound). Each refusal is a positioned `Diagnostic` like any other mistake.
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .fsutil import InputTooLarge, describe_excess, read_bounded

Loc = tuple[str | int, ...]

#: Largest recipe, profile or ``--set`` value, in bytes, refused before parsing (a file is never
#: read past it, so ``/dev/zero`` costs 256 KiB). The flagship recipe is 1.6 KB and a profile
#: under 1 KB. ruamel.yaml's round-trip parser needs ~40 µs per node here, so the bound is set
#: by what a hostile file within it can cost: 256 KiB of comments parse in 0.15 s.
MAX_YAML_BYTES = 256 << 10

#: Deepest nesting of mappings and lists. A recipe is 4 levels deep (``deploy.rpi4.hosts[0]``);
#: ruamel.yaml composes recursively, and 50,000 ``[`` used to end in a RecursionError.
MAX_YAML_DEPTH = 64

#: Most nodes a document may expand to, counting every alias and merge key (``<<: *x``) as a
#: copy of what it refers to. A recipe has ~150 and a profile ~40; 10,000 allow a list of
#: thousands of hosts and parse in ~0.4 s. Nine levels of nine aliases ("billion laughs", 350
#: bytes) expand to 387 million nodes and hung `recipe validate`; they are refused at the alias
#: that crosses this bound, after composing a few dozen nodes.
MAX_YAML_NODES = 10_000

#: Python refuses to convert longer digit strings to int (a ValueError deep inside ruamel).
_INT_DIGITS = 4000

# ruamel's scanner looks up to 1024 characters ahead for a possible simple key and re-checks
# every open flow level at each token, so a line of 1,000 ``[`` costs it ~0.7 s before the
# composer sees the first node. A run of more opening brackets than the depth bound is refused
# from the text alone (in a quoted string or a comment too: no recipe needs one).
_BRACKET_RUN = re.compile(rf"(?:[\[{{][ \t\r\n]*){{{MAX_YAML_DEPTH + 1}}}")


class _Refused(Exception):
    """Raised inside the composer; `load_yaml` turns it into a positioned Diagnostic."""

    def __init__(self, mark: Any, message: str):
        self.mark = mark
        super().__init__(message)


class _BoundedComposer(Composer):
    """ruamel's composer with the depth and expansion bounds applied while nodes are built.

    The expanded size of a node is 1 + that of its children, an alias counting as a full copy of
    its anchor's node (computed once per node, so checking costs linear time, not expansion
    time). The running total of the document is checked at every alias, so the error points at
    the alias that makes the document too large. An alias to an enclosing node still being built
    (``&a [*a]``) would expand forever and is refused too.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader=loader)
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
        self._level = 0
        self._total = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            if node.end_mark is None:  # ruamel sets it when the node's last child is done
                raise _Refused(event.start_mark, f"alias *{event.anchor} refers to a node that "
                               "contains it (it would expand forever)")
            size, depth = self._size.get(id(node), (1, 1))
            self._total += size
            if self._total > MAX_YAML_NODES:
                raise _Refused(event.start_mark, f"aliases expand the document past "
                               f"{MAX_YAML_NODES:,} nodes (alias *{event.anchor} adds {size:,})")
            if self._level + depth > MAX_YAML_DEPTH:
                raise _Refused(event.start_mark, f"alias *{event.anchor} nests the document "
                               f"deeper than {MAX_YAML_DEPTH} levels")
            return node
        self._level += 1
        if self._level > MAX_YAML_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_YAML_DEPTH} levels")
        self._total += 1
        if self._total > MAX_YAML_NODES:
            raise _Refused(event.start_mark, f"the document has more than {MAX_YAML_NODES:,} nodes")
        node = super().compose_node(parent, index)
        self._level -= 1
        if isinstance(node, ScalarNode) and len(node.value) > _INT_DIGITS and str(node.tag).endswith(":int"):
            raise _Refused(node.start_mark, f"an integer of {len(node.value):,} digits")
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, depth = 1, 1
        for child in children:
            csize, cdepth = self._size.get(id(child), (1, 1))
            size += csize
            depth = max(depth, cdepth + 1)
        self._size[id(node)] = (size, depth)
        return node


class Strict(BaseModel):
    """Base of every recipe and profile section: unknown keys are errors, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a configuration file, positioned for a human and an editor."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    field: str
    message: str
    omitted: int = dc_field(default=0, compare=False)  # for the "(more)" line: how many it hides

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: error: {self.field}: {self.message}"


#: Most diagnostics reported for one document (compilers stop too): a file of 10,000 unknown
#: keys would otherwise print 10,000 lines after 10,000 "did you mean" searches (1.5 s here).
MAX_DIAGNOSTICS = 100


def more_diagnostics(filename: str, omitted: int) -> Diagnostic:
    """The line that stands for ``omitted`` diagnostics left out (line 0: no position)."""
    return Diagnostic(filename, 0, 0, "(more)", f"{omitted:,} more errors not shown", omitted)


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
    yaml.Composer = _BoundedComposer
    return yaml


def _too_large(filename: str, size: int | None, what: str) -> ConfigError:
    why = f"{what} is {describe_excess(MAX_YAML_BYTES, size)}; nothing was parsed"
    return ConfigError([Diagnostic(filename, 1, 1, "file", why)])


def load_yaml(text: str, filename: str) -> Any:
    """Parse YAML text into ruamel's position-carrying containers or raise ConfigError.

    The text is refused past `MAX_YAML_BYTES`, and the parse stops at the first node that goes
    deeper than `MAX_YAML_DEPTH` or expands the document past `MAX_YAML_NODES`.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise _too_large(filename, size, "the text")
    run = _BRACKET_RUN.search(text)
    if run is not None:
        end = run.end() - 1
        while text[end] not in "[{":
            end -= 1
        line = text.count("\n", 0, end) + 1
        col = end - (text.rfind("\n", 0, end) + 1) + 1
        msg = f"{MAX_YAML_DEPTH + 1} opening brackets in a row: nested deeper than {MAX_YAML_DEPTH} levels"
        raise ConfigError([Diagnostic(filename, line, col, "yaml", msg)])
    try:
        return _yaml().load(io.StringIO(text))
    except _Refused as exc:
        line, col = exc.mark.line + 1, exc.mark.column + 1
        raise ConfigError([Diagnostic(filename, line, col, "yaml", str(exc))]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([Diagnostic(filename, line, col, "yaml", problem or "invalid YAML")]) from None
    except YAMLError as exc:
        raise ConfigError([Diagnostic(filename, 1, 1, "yaml", str(exc).strip())]) from None
    except ValueError as exc:  # a value ruamel cannot construct, e.g. a timestamp out of range
        raise ConfigError([Diagnostic(filename, 1, 1, "yaml", f"cannot read a value: {exc}")]) from None


def read_yaml_file(path: Path) -> Any:
    """Read at most `MAX_YAML_BYTES` + 1 bytes of ``path`` (a pipe or ``/dev/zero`` too) and parse."""
    try:
        data = read_bounded(path, MAX_YAML_BYTES)
    except FileNotFoundError:
        raise ConfigError([Diagnostic(str(path), 1, 1, "file", "no such file")]) from None
    except InputTooLarge as exc:
        raise _too_large(str(path), exc.size, "the file") from None
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError([Diagnostic(str(path), 1, 1, "file", f"cannot read: {why}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        why = f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        raise ConfigError([Diagnostic(str(path), line, col, "file", why)]) from None
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
    errors = exc.errors(include_url=False)
    if len(errors) > MAX_DIAGNOSTICS:
        out.append(more_diagnostics(positions.filename, len(errors) - MAX_DIAGNOSTICS))
    for err in errors[:MAX_DIAGNOSTICS]:
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
