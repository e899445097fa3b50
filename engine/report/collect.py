"""Collecting the run report: every section, table and image, read from the run directory.

Only from what the stages wrote (summary.json, each stage's result.json and its artifacts, the
bundle manifests, the per-host files): nothing is measured here. A report can be built without
the recipe too (``stages`` None): it then shows the stages the run directory holds. Rendering the
collected `Report` to HTML and Markdown is `engine.report.render`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import RunDir, read_json

_ORDER = ("data", "train", "evaluate", "prune", "qat", "export", "build", "verify", "ship", "check")


# ------------------------------------------------------------------------------ formatting


def fmt(v: Any, digits: int = 3) -> str:
    """One table cell: None -> '—', floats rounded, ints grouped, lists joined."""
    if v is None or v == "":
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.{digits}f}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt(x) for x in v) or "—"
    return str(v)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def fmt_bytes(n: Any) -> str:
    if not _num(n):
        return "—"
    unit, size = next(((u, k) for u, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if n >= k), ("B", 1))
    return f"{n / size:.2f} {unit}" if size > 1 else f"{int(n)} B"


def fmt_ms(v: Any) -> str:
    return f"{v:,.1f} ms" if _num(v) else "—"


def fmt_count(v: Any, unit: str) -> str:
    """1_630_000_000 -> '1.63 G' (params in M, MACs in G)."""
    return f"{v / {'M': 1e6, 'G': 1e9}[unit]:.2f} {unit}" if _num(v) else "—"


def _ratio(after: Any, before: Any) -> str:
    return f"{after / before:.2f}×" if _num(after) and _num(before) and before else "—"


def _diff(after: Any, before: Any) -> str:
    return f"{after - before:+.3f}" if _num(after) and _num(before) else "—"


# what build's int8 guard measures per model (engine.compress.int8.guard_metric)
GUARD_METRICS = {"detector": "end-to-end line accuracy, read by the {read_by}", "recognizer": "line accuracy on crops"}


def _calibration(c: Any) -> str:
    if not isinstance(c, dict):
        return "—"
    method = str(c.get("method", "?"))
    if method == "percentile":
        method += f" {c.get('percentile')}"
    return f"{method}, {c.get('samples')} samples"


def _signed(v: Any) -> str:
    return f"{v:+.3f}" if _num(v) else "—"


# ------------------------------------------------------------------------------ structure


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png)


@dataclass
class Report:
    name: str
    description: str
    status: str  # passed | failed | incomplete
    facts: list[tuple[str, str]]  # header line: (label, value)
    cards: list[tuple[str, str, str]]  # (label, value, detail)
    sections: list[Section]


def _read(path: Path) -> dict[str, Any]:
    return read_json(path) or {}  # missing or corrupt: an empty section, not a failed report


def _artifact(results: dict[str, dict[str, Any]], stage: str, key: str) -> Path | None:
    """A file a stage handed on (its result.json artifacts), or None."""
    value = ((results.get(stage) or {}).get("artifacts") or {}).get(key)
    return Path(value) if isinstance(value, str) else None


def _stage_names(layout: RunDir, summary: dict[str, Any], stages: Sequence[str] | None) -> list[str]:
    """The recipe's stages in graph order; without the recipe, what the run directory shows."""
    if stages:
        return list(stages)
    names = set(summary.get("executed", [])) | set(summary.get("skipped", []))
    names |= set(summary.get("failed", {})) | set(summary.get("not_run", []))
    names |= set(layout.finished_stages())
    names.discard("(engine)")
    return sorted(names, key=lambda n: (_rank(n), n))


def _rank(stage: str) -> int:
    kind = stage.split(":")[0]
    return _ORDER.index(kind) if kind in _ORDER else len(_ORDER)


# ------------------------------------------------------------------------------ collecting


def build_report(run_dir: Path, recipe: Any = None, stages: Sequence[str] | None = None,
                 profiles: dict[str, str] | None = None, notices: dict[str, str] | None = None) -> Report:
    """Everything the report shows, read from ``run_dir``. ``recipe`` (a Recipe) adds the
    description and the verify bars; ``profiles`` maps target -> the profile's precision (to say
    why a precision was chosen); ``notices`` the stages the graph left out (when no summary)."""
    layout = RunDir(run_dir)
    summary = layout.summary() or {}
    had_summary = bool(summary)
    summary.setdefault("not_applicable", dict(notices or {}))
    names = _stage_names(layout, summary, stages)
    results = {n: layout.result(n) or {} for n in names}
    metrics = {n: r.get("metrics") or {} for n, r in results.items()}
    failed: dict[str, str] = summary.get("failed") or {}
    not_applicable: dict[str, str] = summary.get("not_applicable") or {}
    not_run = [n for n in summary.get("not_run", []) if n not in failed]
    complete = had_summary and not not_run and all(results.values())
    status = "failed" if failed else "passed" if complete else "incomplete"
    sections = [_stages_section(layout, names, summary, results)]
    sections += _data_sections(layout, results, metrics.get("data", {}))
    sections += _training_sections(layout, names, results, metrics)
    targets = [n.split(":", 1)[1] for n in names if n.startswith("build:")]
    targets += [n.split(":", 1)[1] for n in not_applicable if n.startswith("ship:") and
                n.split(":", 1)[1] not in targets]
    for target in targets:
        sections += _target_sections(layout, target, metrics, (profiles or {}).get(target))
    rows = [[n, "skipped", why] for n, why in sorted(not_applicable.items(), key=lambda kv: _rank(kv[0]))]
    rows += [[n, "failed", why] for n, why in failed.items()]
    rows += [[n, "not run", "an upstream stage failed or was not selected"] for n in not_run]
    sections += [Section("Skipped, failed or not run", tables=[Table(["stage", "state", "why"], rows)])] if rows else []

    name = summary.get("recipe") or (recipe.name if recipe is not None else layout.root.name)
    facts = [("finished", summary.get("finished", "never (no summary.json)")),
             ("recipe", str(summary.get("recipe_path", "—"))), ("recipe hash", str(summary.get("recipe_hash", "—"))[:12]),
             ("run directory", str(layout.root))]
    bars = recipe.verify.model_dump().items() if recipe is not None else []
    facts += [("verify bars", ", ".join(f"{k} {v}" for k, v in bars if v is not None))] if bars else []
    cards = _cards(summary, names, metrics, sum(map(bool, results.values())))
    return Report(name, recipe.description if recipe is not None else "", status, facts, cards, sections)


def _cards(summary: dict[str, Any], names: list[str], metrics: dict[str, dict[str, Any]],
           done: int) -> list[tuple[str, str, str]]:
    ran, fresh, bad = (len(summary.get(k, ())) for k in ("executed", "skipped", "failed"))
    cards = [("stages done", f"{done}/{len(names)}", f"this run: {ran} ran, {fresh} up to date, {bad} failed")]
    ev = metrics.get("evaluate") or {}
    if ev:
        cards.append(("detection hmean", fmt(ev.get("hmean")),
                      f"P {fmt(ev.get('precision'))} · R {fmt(ev.get('recall'))} (fp32, val)"))
        cards.append(("word accuracy", fmt(ev.get("word_accuracy")), f"CER {fmt(ev.get('cer'))} on ground-truth crops"))
        cards.append(("end-to-end lines", fmt(ev.get("e2e_line_accuracy")), "detected and read exactly"))
    for n in names:
        if n.startswith("verify:") and metrics.get(n):
            m = metrics[n]
            active = m.get("active")
            cards.append((f"{n.split(':', 1)[1]} p50", fmt_ms(m.get(f"{active}_latency_p50_ms")),
                          f"{active} · p50 on this machine · hmean {fmt(m.get(f'{active}_hmean'))}"))
    total = sum((summary.get("durations") or {}).values())
    if total:
        cards.append(("run time", f"{total:,.0f} s" if total >= 10 else f"{total:.1f} s", "stages executed this run"))
    return cards


def _stages_section(layout: RunDir, names: list[str], summary: dict[str, Any],
                    results: dict[str, dict[str, Any]]) -> Section:
    sec = Section("Stages")
    failed = summary.get("failed") or {}
    rows = []
    for n in names:
        state = ("failed" if n in failed else "ran" if n in summary.get("executed", [])
                 else "up to date" if n in summary.get("skipped", []) else "done earlier" if results.get(n)
                 else "not run")
        timing = _read(layout.timing_file(n))
        secs = (summary.get("durations") or {}).get(n, timing.get("seconds"))
        notes = failed.get(n) or "; ".join((results.get(n) or {}).get("notes") or [])
        rows.append([n, state, f"{secs:,.1f} s" if _num(secs) else "—", notes[:300]])
    for n, why in sorted((summary.get("not_applicable") or {}).items(), key=lambda kv: _rank(kv[0])):  # beside their target's stages
        param = n.partition(":")[2]
        at = max((i + 1 for i, r in enumerate(rows) if r[0].partition(":")[2] == param and _rank(r[0]) < _rank(n)),
                 default=len(rows))
        rows.insert(at, [n, "skipped", "—", why])
    sec.tables.append(Table(["stage", "state", "time", "notes"], rows))
    return sec


def _data_sections(layout: RunDir, results: dict[str, dict[str, Any]], headline: dict[str, Any]) -> list[Section]:
    dataset = ((results.get("data") or {}).get("artifacts") or {}).get("dataset") or {}
    data = _read(Path(dataset["summary"])) if dataset.get("summary") else {}
    if not data and not headline:
        return []
    sec = Section("Dataset")
    splits = data.get("splits") or {}
    crops = data.get("crops") or {}
    rows = []
    for split in ("train", "val", "all"):
        s = splits.get(split)
        if isinstance(s, dict):
            rows.append([split, fmt(s.get("images")), fmt(s.get("boxes")), fmt(s.get("ignored_boxes")),
                         fmt(crops.get(split, sum(crops.values()) if split == "all" and crops else None)),
                         fmt(s.get("max_text_length")),
                         f"{100 * s['charset_coverage']:.1f} %" if isinstance(s.get("charset_coverage"), float) else "—"])
    if not rows:
        rows = [[k, fmt(v)] for k, v in headline.items()]
        sec.tables.append(Table(["metric", "value"], rows))
    else:
        sec.tables.append(Table(["split", "images", "boxes", "ignored", "crops", "longest text", "charset used"], rows))
    unknown = data.get("unknown_chars") or {}
    bits = [f"format {data.get('format', '?')}", f"split from {(data.get('split') or {}).get('source', '?')}"]
    if unknown:
        bits.append(f"unknown characters: policy {unknown.get('policy')}, {unknown.get('skipped_lines', 0)} lines "
                    f"skipped, {unknown.get('replaced_lines', 0)} replaced")
    if data.get("charset"):
        bits.append(f"charset ({len(data['charset'])} characters): {data['charset']}")
    sec.text.append("; ".join(bits) + ".")
    missing = (splits.get("train") or {}).get("charset_missing")
    sec.text += [f"Charset characters never seen in training: {missing}"] if missing else []
    sec.text += [f"warning: {w}" for w in (data.get("warnings") or [])[:10]]
    if dataset.get("preview"):
        preview = Path(dataset["preview"])
        sec.images.append((f"validation images with their labels ({layout.relative(preview)})", preview))
    return [sec]


def _training_sections(layout: RunDir, names: list[str], results: dict[str, dict[str, Any]],
                       metrics: dict[str, dict[str, Any]]) -> list[Section]:
    out = []
    models = [n for n in names if n.startswith("train:")]
    if models:
        sec = Section("Training")
        rows = []
        for n in models:
            m = metrics.get(n) or {}
            rows.append([n.split(":", 1)[1], fmt(m.get("init") or "from scratch"), fmt(m.get("epochs")),
                         fmt(m.get("steps")), fmt(m.get("best_epoch")), fmt(m.get("best_metric"))])
        sec.tables.append(Table(["model", "init", "epochs", "steps", "best epoch", "best val metric"], rows,
                                "best val metric: hmean for the detector, line accuracy for the recognizer"))
        curves = {n: _artifact(results, n, f"{n.split(':', 1)[1]}_curves") for n in models}
        sec.images += [(f"{n.split(':', 1)[1]} training curves ({layout.relative(png)})", png)
                       for n, png in curves.items() if png is not None]
        out.append(sec)
    ev = metrics.get("evaluate") or {}
    if ev:
        sec = Section("Evaluation (fp32, validation split)")
        keys = [("hmean", "detection hmean (ICDAR 2015)"), ("precision", "detection precision"),
                ("recall", "detection recall"), ("word_accuracy", "word accuracy (ground-truth crops)"),
                ("line_accuracy", "line accuracy (ground-truth crops)"), ("cer", "character error rate"),
                ("e2e_line_accuracy", "end-to-end line accuracy"), ("e2e_hmean", "end-to-end hmean"),
                ("val_images", "validation images"), ("val_crops", "validation crops")]
        rows = [[label, fmt(ev[k])] for k, label in keys if k in ev]
        sec.tables.append(Table(["metric", "value"], rows))
        out.append(sec)
    pr = metrics.get("prune") or {}
    if pr:
        sec = Section("Pruning")
        rows = []
        for model in ("detector", "recognizer"):
            p = {k[len(model) + 1:]: v for k, v in pr.items() if k.startswith(model + "_")}
            if not p:
                continue
            metric = next((k[: -len("_before")] for k in p if k.endswith("_before") and
                           k[: -len("_before")] not in ("params", "macs", "latency_ms")), None)
            rows.append([model, "params", fmt_count(p.get("params_before"), "M"), fmt_count(p.get("params_after"), "M"),
                         _ratio(p.get("params_after"), p.get("params_before"))])
            rows.append([model, "MACs", fmt_count(p.get("macs_before"), "G"), fmt_count(p.get("macs_after"), "G"),
                         _ratio(p.get("macs_after"), p.get("macs_before"))])
            rows.append([model, "ONNX latency", fmt_ms(p.get("latency_ms_before")), fmt_ms(p.get("latency_ms_after")),
                         _ratio(p.get("latency_ms_after"), p.get("latency_ms_before"))])
            if metric and p.get(f"{metric}_pruned") is not None:
                rows.append([model, f"{metric}, pruned before fine-tuning", fmt(p.get(f"{metric}_before")),
                             fmt(p.get(f"{metric}_pruned")), _diff(p.get(f"{metric}_pruned"), p.get(f"{metric}_before"))])
            if metric:
                rows.append([model, metric, fmt(p.get(f"{metric}_before")), fmt(p.get(f"{metric}_after")),
                             _diff(p.get(f"{metric}_after"), p.get(f"{metric}_before"))])
        sec.tables.append(Table(["model", "measure", "before", "after", "change"], rows,
                                "latency: median of onnxruntime runs, 2 threads, on this machine"))
        sec.tables += _channel_tables(layout, results)
        for model in ("detector", "recognizer"):
            png = _artifact(results, "prune", f"{model}_prune_curves")
            if png is not None:
                sec.images.append((f"{model} fine-tuning after pruning ({layout.relative(png)})", png))
        out.append(sec)
    return out


def _channel_tables(layout: RunDir, results: dict[str, dict[str, Any]]) -> list[Table]:
    """Per model, the layers whose output channels were pruned (``prune/<model>.channels.json``):
    with ``allocation: sensitivity`` this is where the MACs were taken from."""
    tables = []
    plans = (_artifact(results, "prune", f"{m}_channels") for m in ("detector", "recognizer"))
    for path in (p for p in plans if p is not None):
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
            changed = [(name, c["before"][1], c["after"][1]) for name, c in plan["channels"].items()
                       if c["after"][1] != c["before"][1]]
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue  # an unreadable plan loses this table, not the report
        rows = [[name, str(b), str(a), f"{a / b:.0%}"] for name, b, a in changed]
        model = path.name.split(".")[0]
        tables.append(Table(["layer", "channels before", "after", "kept"], rows,
                            f"{model}: {plan.get('importance')} ranking, {plan.get('allocation')} allocation, "
                            f"{len(changed)} layers pruned ({layout.relative(path)})"))
    return tables


def _target_sections(layout: RunDir, target: str, metrics: dict[str, dict[str, Any]],
                     profile_precision: str | None) -> list[Section]:
    build = metrics.get(f"build:{target}") or {}
    verify = metrics.get(f"verify:{target}") or {}
    bundle_dir = layout.bundle_dir(f"verify:{target}")
    if not (bundle_dir / "manifest.json").is_file():
        bundle_dir = layout.bundle_dir(f"build:{target}")
    manifest = _read(bundle_dir / "manifest.json")
    sec = Section(f"Target {target}")
    built = build.get("candidates") or sorted(manifest.get("candidates") or [])
    active = verify.get("active") or manifest.get("precision") or build.get("active")
    measured = (manifest.get("verify") or {}).get("candidates") or {}
    facts = [f"precisions built: {fmt(built)}", f"shipped precision: {active or '—'}"]
    facts += [f"reduce_range {fmt(build['reduce_range'])}"] if "reduce_range" in build else []
    facts += [f"runtime {manifest['runtime']} on {manifest.get('arch', '?')}"] if manifest.get("runtime") else []
    sec.text.append("; ".join(facts) + ".")
    sec.text.append(f"Why {active}: {_why(active, measured, manifest, profile_precision)}")
    guard = manifest.get("int8_guard") or {}
    if guard:
        rows = [[m, GUARD_METRICS.get(m, "accuracy").format(read_by=g.get("read_by") or "fp32 recognizer"),
                 _calibration(g.get("calibration")),
                 fmt(g.get("fp32_metric")), fmt(g.get("final_metric")), str(len(g.get("excluded") or [])),
                 ", ".join(g.get("excluded") or []) or "none", "yes" if g.get("met") else "NO"]
                for m, g in guard.items()]
        sec.tables.append(Table(["model", "guard metric (val)", "calibration", "fp32", "int8", "excluded",
                                 "nodes kept in float", "within max_drop"], rows, "int8 accuracy guard (build)"))
    if measured:
        rows = []
        for p, m in sorted(measured.items(), key=lambda kv: kv[0] != active):
            rows.append([("✓ " if p == active else "") + p, fmt(m.get("hmean")), fmt(m.get("e2e_line_accuracy")),
                         _signed(m.get("drop_vs_fp32")), fmt(m.get("within_drop")), fmt_ms(m.get("latency_p50_ms")),
                         fmt_ms(m.get("latency_p90_ms")),
                         f"{m['peak_rss_mb']:.0f} MB" if _num(m.get("peak_rss_mb")) else "—"])
        where = (manifest.get("verify") or {}).get("measured_on", "?")
        sec.tables.append(Table(["precision", "hmean", "e2e lines", "drop vs fp32", "within drop", "p50", "p90",
                                 "peak RSS"], rows, f"verify: candidates measured through the device runtime on {where}"))
    files = _bundle_files(bundle_dir, layout.bundle_archive(f"build:{target}"))
    if files:
        sec.tables.append(Table(["artifact", "size"], files, f"bundle {layout.relative(bundle_dir)}"))
    for kind, cols in (("ship", {"release": "release", "previous": "previous", "uploaded_bytes": "uploaded",
                                 "seconds": "time"}),
                       ("check", {"release": "release", "precision": "precision", "hmean": "hmean",
                                  "e2e_line_accuracy": "e2e lines", "latency_p50_ms": "p50", "latency_p90_ms": "p90"})):
        hosts = _read(layout.hosts_file(f"{kind}:{target}"))
        if hosts:
            rows = []
            for host, r in hosts.items():
                cells = [fmt_bytes(r.get(c)) if c.endswith("bytes") else fmt_ms(r.get(c)) if c.endswith("_ms")
                         else f"{r[c]:.2f} s" if c == "seconds" and _num(r.get(c))
                         else fmt(r.get(c)) for c in cols]
                state = r.get("status", "?") if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error', '')}"
                if r.get("rolled_back_to"):
                    state += f" (rolled back to {r['rolled_back_to']})"
                rows.append([host, *cells, state])
            sec.tables.append(Table(["host", *cols.values(), "status"], rows, f"{kind}:{target} (per host)"))
    return [sec]


def _why(active: Any, measured: dict[str, Any], manifest: dict[str, Any], profile_precision: str | None) -> str:
    if not active:
        return "not built yet."
    if profile_precision and profile_precision != "auto":
        return f"the target profile asks for {profile_precision}."
    chosen = measured.get(active) or {}
    others = {p: m for p, m in measured.items() if p != active}
    if (manifest.get("verify") or {}).get("host_latency_is_device_latency") and chosen:
        parts = [f"{p} {fmt_ms(m.get('latency_p50_ms'))}" + ("" if m.get("within_drop") else " (over max_drop)")
                 for p, m in others.items()]
        return (f"fastest candidate within verify.max_drop on this machine: {active} "
                f"{fmt_ms(chosen.get('latency_p50_ms'))} p50" + (f" vs {', '.join(parts)}." if parts else "."))
    if measured:
        return ("the profile's default; latency measured here is not the device's, so the choice is "
                "left to the profile (check measures it on the device).")
    return "the profile's default (no verify measurements yet)."


def _bundle_files(bundle: Path, archive: Path) -> list[list[str]]:
    if not bundle.is_dir():
        return []
    def size(d: Path) -> int:
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())

    rows = [[str(p.relative_to(bundle)), fmt_bytes(p.stat().st_size)] for p in sorted(bundle.glob("models/*/*.onnx"))]
    rows += [[f"{sub}/", fmt_bytes(size(bundle / sub))] for sub in ("runtime", "val") if (bundle / sub).is_dir()]
    rows.append(["whole bundle", fmt_bytes(size(bundle))])
    return rows + ([[archive.name, fmt_bytes(archive.stat().st_size)]] if archive.is_file() else [])
