"""The run report: ``RUN_DIR/report.html`` and ``RUN_DIR/report.md``, rebuilt after every run.

`collect` reads what the stages wrote into a `Report`; `render` turns it into HTML and Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_text
from ..rundir import RunDir
from .collect import Report, build_report
from .render import render_html, render_markdown

__all__ = ["Report", "build_report", "render_html", "render_markdown", "write_report"]


def write_report(run_dir: Path, recipe: Any = None, stages: Sequence[str] | None = None,
                 profiles: dict[str, str] | None = None, notices: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``run_dir`` (atomically); returns both paths."""
    run_dir = Path(run_dir)
    report = build_report(run_dir, recipe, stages, profiles, notices)
    html_path, md_path = RunDir(run_dir).report_files
    atomic_write_text(html_path, render_html(report))
    atomic_write_text(md_path, render_markdown(report, run_dir))
    return html_path, md_path
