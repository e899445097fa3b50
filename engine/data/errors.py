"""Errors for bad datasets.

A dataset is usually broken in many places at once (a labelling tool exported every file with the
same mistake), so readers and validation *collect* problems and raise one `DatasetError` at the
end.  Fixing a dataset one error per run is miserable; one report listing every bad line is not.
Every problem names the file and, where the format has lines, the 1-based line number, in the
`file:line: message` shape editors and terminals turn into links.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: How many problems the exception message spells out; `.problems` always holds all of them.
MAX_LISTED = 50


def display_path(path: str | Path) -> str:
    """Path relative to the working directory when it lies below it (short, clickable), else as is."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    `line` is 1-based where the label format has lines; JSON and XML formats that cannot point at a
    line name the element instead in `where` (e.g. ``task 3 (id=17), region r1``).
    """

    file: str
    line: int | None
    message: str
    where: str | None = None

    def __str__(self) -> str:
        loc = display_path(self.file)
        if self.line is not None:
            loc = f"{loc}:{self.line}"
        if self.where:
            loc = f"{loc}: {self.where}"
        return f"{loc}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "where": self.where, "message": self.message}


class DatasetError(ValueError):
    """A dataset failed to read or validate; `.problems` lists every problem found."""

    def __init__(self, problems: Iterable[Problem] | str, header: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem(file="<dataset>", line=None, message=problems)]
        self.problems: list[Problem] = list(problems)
        n = len(self.problems)
        head = header or f"dataset has {n} problem{'s' if n != 1 else ''}"
        shown = [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if n > MAX_LISTED:
            shown.append(f"  ... and {n - MAX_LISTED} more")
        super().__init__(head + ":\n" + "\n".join(shown) if shown else head)


class ProblemList(list):
    """A list of `Problem` with a shorthand `add()` and `raise_if_any()`."""

    def add(self, file: str | Path, line: int | None, message: str, where: str | None = None) -> None:
        self.append(Problem(str(file), line, message, where))

    def raise_if_any(self, header: str | None = None) -> None:
        if self:
            raise DatasetError(list(self), header)
