"""Rendering the run report: one self-contained HTML file and the same tables in Markdown.

Why: ``summary.json`` and the stages' ``result.json`` files hold every number, but nobody reads
nine JSON files to learn whether the Pi's int8 model was kept, what it cost in accuracy and which
hosts run it. The report puts each decision beside the measurements that made it, with the
dataset preview and training curves. Both files render the same collected sections
(`engine.report.collect`). The HTML is self-contained (images as ``data:`` URIs, inline CSS, no
script, no network) so it renders the same offline, in a mail client or as a CI artifact; the
Markdown links images relative to the run directory.
"""

from __future__ import annotations

import base64
import html
import re
import time
from pathlib import Path

from .collect import Report, Table

_NUMERIC = re.compile(r"^[-+−]?[\d.,]+(\s?(%|×|ms|s|MB|kB|B|M|G|k))?$")

_CSS = Path(__file__).resolve().parent.parent / "templates" / "report.css"  # inlined into every report
_ACCENT = {"passed": "#2e9d5b", "failed": "#d64545", "incomplete": "#d99c1e"}
_STATE_CLASS = {"ok": "ok", "ran": "ok", "up to date": "ok", "done earlier": "ok", "yes": "ok",
                "failed": "bad", "NO": "bad", "no": "bad", "not run": "bad", "skipped": "skip"}


def _numeric_columns(table: Table) -> list[bool]:
    cols = []
    for i in range(len(table.headers)):
        cells = [r[i] for r in table.rows if i < len(r) and r[i] not in ("—", "")]
        cols.append(bool(cells) and all(_NUMERIC.match(c.replace("✓ ", "")) for c in cells))
    return cols


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(report: Report) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(report.name)} — run report</title>",
           f"<style>:root{{--accent:{_ACCENT.get(report.status, '#627d98')}}}{_CSS.read_text(encoding='utf-8')}</style></head><body><main>",
           f"<header><h1>{e(report.name)}<span class='badge'>{e(report.status.upper())}</span></h1>"]
    if report.description:
        out.append(f"<div class='desc'>{e(report.description)}</div>")
    out.append("<div class='facts'>" + " · ".join(f"<b>{e(k)}</b> {e(v)}" for k, v in report.facts) + "</div></header>")
    out.append("<div class='cards'>" + "".join(
        f"<div class='card'><div class='l'>{e(label)}</div><div class='v'>{e(value)}</div><div class='d'>{e(detail)}</div></div>"
        for label, value, detail in report.cards) + "</div>")
    for sec in report.sections:
        out.append(f"<section><h2>{e(sec.title)}</h2>")
        out += [f"<p>{e(t)}</p>" for t in sec.text]
        for table in sec.tables:
            if table.caption:
                out.append(f"<h3>{e(table.caption)}</h3>")
            nums = _numeric_columns(table)
            out.append(("<table class='narrow'>" if len(table.headers) <= 3 else "<table>") + "<tr>" + "".join(
                f"<th class='num'>{e(h)}</th>" if n else f"<th>{e(h)}</th>" for h, n in zip(table.headers, nums, strict=True)) + "</tr>")
            out += ["<tr>" + "".join(f"<td class='{'num' if n else _STATE_CLASS.get(c.split(':')[0], '')}'>{e(c)}</td>"
                                     for c, n in zip(row, nums, strict=False)) + "</tr>" for row in table.rows]
            out.append("</table>")
        images = [(c, p) for c, p in sec.images if p.is_file()]
        if images:
            out.append("<div class='grid2'>" if len(images) > 1 else "<div class='one'>")
            out += [f"<figure><img alt='{e(c)}' src='{_data_uri(p)}'><figcaption>{e(c)}</figcaption></figure>"
                    for c, p in images]
            out.append("</div>")
        out.append("</section>")
    out.append(f"<footer>written {e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by recipe report · every number comes from "
               "the stages' result.json files</footer></main></body></html>")
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, run_dir: Path) -> str:
    out = [f"# {report.name} — {report.status.upper()}", ""]
    if report.description:
        out += [report.description, ""]
    out += [f"- **{k}**: {v}" for k, v in report.facts] + [""]
    out += ["| " + " | ".join(c[0] for c in report.cards) + " |", "|" + "---:|" * len(report.cards),
            "| " + " | ".join(_md_cell(c[1]) for c in report.cards) + " |", ""]
    for sec in report.sections:
        out += [f"## {sec.title}", ""]
        out += [line for t in sec.text for line in (_md_cell(t), "")]
        for table in sec.tables:
            if table.caption:
                out += [f"*{table.caption}*", ""]
            nums = _numeric_columns(table)
            out.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
            out.append("|" + "".join("---:|" if n else "---|" for n in nums))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            out.append("")
        out += [line for caption, png in sec.images if png.is_file() for line in
                (f"![{caption}]({png.relative_to(run_dir) if png.is_relative_to(run_dir) else png})", "")]
    return "\n".join(out)
