"""The `verify:TARGET` stage: the bundle run through the device runtime here, before shipping.

``python -m runtime.check`` inside the bundle (the very entry point a device runs) reads the
bundle's validation images with every candidate precision; the predictions are scored with the
one metrics implementation and each reduced precision is held to the fp32 export
(``verify.max_drop``). For ``precision: auto`` on a machine of the target's architecture the
fastest candidate within the bar becomes the active one, and (``verify.candidates: chosen``,
the default) the others' model files leave the bundle: a device pays for the copy it runs, not
for the ones that lost (the flagship's local-cpu bundle: 33.2 MB with both candidates, 11.1 MB
with int8 only).
The result is the *verified* bundle: the build's, re-sealed with the measurements, which is what
ship installs.

A bundle that reads with a language model (``models.decoder.type: lm``) keeps it only if it reads
at least as many val lines as greedy CTC on the same boxes, summed over the candidates: the
check reports both readings from one recognizer pass (``greedy_text``), so the comparison costs
nothing. Otherwise the verified bundle reads greedily, without ``lm.json``, and says why in its
manifest (``recognizer.decoder.dropped``): a language model of too few labels, or of labels
unlike the val images, must not ship a loss.

A target of another arch is checked for accuracy only (its latency is the device's business:
check), in one pass on this host's cores. A candidate already checked for another target of the
run with the same models and settings is not checked again (engine/deploy/check_cache.py): the
flagship's rpi4 bundle holds local-cpu's models byte for byte.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

from ..fsutil import replace_dir
from .check import bars_failed
from .contract import StageContext, StageFailed, StageResult

#: the decoder section's line rules (engine/runtime/split.py): a bundle that drops its language
#: model keeps them, since they never read the language model's file
LINE_SECTIONS = ("split_lines", "join_lines")


def run(ctx: StageContext) -> StageResult:
    from ..deploy.bundle import BundleError, bundle_labels, finalize_bundle
    from ..deploy.check_cache import cached_check
    from ..runtime.bundle_manifest import manifest_meta, read_manifest
    from ..training.metrics import score_predictions, within_drop

    target = ctx.param
    profile = ctx.target_profile()
    assert target
    built = Path(ctx.upstream_artifact(f"build:{target}", target)["bundle"])
    meta = manifest_meta(read_manifest(built))
    candidates = sorted(meta.get("candidates") or [meta["precision"]])
    labels = bundle_labels(built)
    verify = ctx.recipe.verify
    here = platform.machine() == profile.arch
    # Another arch's latency is measured on its device (check); here only accuracy counts, so
    # one pass on this host's cores (a Pi profile's 4 threads on 2 cores took 2x as long).
    runs, threads = (2, None) if here else (1, min(profile.threads, os.cpu_count() or 1))
    results: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}
    # fp32 first: the exported fp32 model (checked against torch at export) is the baseline the
    # reduced precisions are held to; pruning's own loss is reported by the prune stage.
    for precision in sorted(candidates, key=lambda p: p != "fp32"):
        try:
            report = cached_check(built, precision, verify.samples, runs, threads, ctx.run.cache_dir, ctx.log)
        except BundleError as exc:
            raise StageFailed(str(exc)) from None
        reports[precision] = report
        results[precision] = score_predictions(report, labels)
        if "reused" in report:
            results[precision]["reused"] = report["reused"]
        ctx.log.info("verify %s %s: %s", target, precision, results[precision])
    decoder = _choose_decoder(meta, reports, results, labels)
    if decoder.get("dropped"):
        ctx.log.warning("verify %s: the language model reads fewer val lines than greedy CTC "
                        "(%s); the verified bundle reads greedily", target, decoder["dropped"])
    baseline = results.get("fp32", {}).get("e2e_line_accuracy")
    if baseline is None:
        baseline = ctx.upstream["evaluate"]["metrics"].get("e2e_line_accuracy")
    for m in results.values():
        m["drop_vs_fp32"] = (baseline - m["e2e_line_accuracy"]) if baseline is not None else None
        m["within_drop"] = m["drop_vs_fp32"] is None or within_drop(m["drop_vs_fp32"], verify.max_drop)
    active = meta["precision"]
    chose = profile.precision == "auto" and here
    if chose:
        passing = [p for p, m in results.items() if m["within_drop"]] or ["fp32"]
        active = min(passing, key=lambda p: results[p]["latency_p50_ms"])
    chosen = results[active]
    if not chosen["within_drop"]:
        raise StageFailed(
            f"{target}: {active} end-to-end line accuracy {chosen['e2e_line_accuracy']:.4f} drops "
            f"{chosen['drop_vs_fp32']:.4f} below the fp32 model (verify.max_drop {verify.max_drop})"
        )
    out = ctx.run.bundle_dir(ctx.name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(built, tmp)
    if chose and verify.candidates == "chosen":
        _keep_only(tmp, meta, active)
    if decoder.get("dropped"):
        (tmp / meta["recognizer"]["decoder"]["file"]).unlink()
        meta["recognizer"] = {**meta["recognizer"], "decoder": decoder}
    meta.update(
        precision=active,
        verify={"measured_on": platform.machine(), "host_latency_is_device_latency": here, "candidates": results},
    )
    finalize_bundle(tmp, meta)
    replace_dir(tmp, out)
    missed = bars_failed(chosen, verify) if here else []
    notes = [f"bars missed on this machine: {', '.join(missed)}"] if missed else []
    if missed and profile.transport == "local":
        raise StageFailed(f"{target}: {'; '.join(missed)}")
    flat = {f"{p}_{k}": v for p, m in results.items() for k, v in m.items() if not isinstance(v, dict)}
    return StageResult(
        outputs=[out / "manifest.json"],
        metrics={"active": active, "decoder": decoder["type"], **flat},
        artifacts={f"{target}:verified": {"bundle": str(out), "precision": active}},
        notes=notes,
    )


def _keep_only(bundle: Path, meta: dict[str, Any], precision: str) -> None:
    """Drop every candidate's model files but ``precision``'s from an unsealed bundle copy."""
    keep = set(meta["candidates"][precision].values())
    for name, paths in meta["candidates"].items():
        if name != precision:
            for rel in set(paths.values()) - keep:
                (bundle / rel).unlink()
    for sub in (bundle / "models").iterdir():
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    meta["candidates"] = {precision: meta["candidates"][precision]}


def _choose_decoder(meta: dict[str, Any], reports: dict[str, dict[str, Any]],
                    results: dict[str, dict[str, Any]], labels: dict[str, Any]) -> dict[str, Any]:
    """The recognizer's decoder section for the verified bundle (see the module docstring).

    A greedy bundle keeps its section.  With a language model each candidate is scored on the
    check's ``greedy_text`` too (``<precision>_greedy_e2e_line_accuracy`` in ``results``); when
    greedy reads more val lines over all candidates, ``results`` become greedy's and the section
    returned is greedy, with the language model's settings and both accuracies under
    ``dropped``.
    """
    from ..training.metrics import score_predictions

    spec = meta["recognizer"].get("decoder") or {"type": "greedy"}
    lines = [ln for r in reports.values() for item in r["predictions"] for ln in item["lines"]]
    if spec.get("type") != "lm" or not all("greedy_text" in ln for ln in lines):
        return spec
    greedy = {p: score_predictions(r, labels, text="greedy_text") for p, r in reports.items()}
    for p, m in results.items():
        m["greedy_e2e_line_accuracy"] = greedy[p]["e2e_line_accuracy"]
    with_lm = sum(m["e2e_line_accuracy"] for m in results.values())
    without = sum(m["e2e_line_accuracy"] for m in greedy.values())
    if without <= with_lm + 1e-9:  # ties keep the language model the recipe asked for
        return spec
    accuracy = {p: {"lm": results[p]["e2e_line_accuracy"], "greedy": greedy[p]["e2e_line_accuracy"]}
                for p in results}
    for p, m in results.items():
        m.update({k: v for k, v in greedy[p].items() if k.startswith("e2e_")})
    rules = {k: v for k, v in spec.items() if k in LINE_SECTIONS}  # not the language model's
    kept = {k: v for k, v in spec.items() if k not in ("file", "sha256", *LINE_SECTIONS)}
    return {"type": "greedy", **rules, "dropped": {**kept, "val_e2e_line_accuracy": accuracy}}
