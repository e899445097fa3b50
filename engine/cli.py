"""The ``recipe`` command.

Exit codes: 0 success; 1 a stage failed or a recipe is invalid (``validate``); 2 bad usage or
an invalid recipe/profile for the other commands. Configuration problems print one
``PATH:LINE:COL: error: field: message`` line each and never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_config_error(exc: ConfigError) -> None:
    for diag in exc.diagnostics:
        print(str(diag), file=sys.stderr)


def _load(args: argparse.Namespace) -> Any:
    from .recipe import load_recipe

    return load_recipe(args.recipe, getattr(args, "set", None) or ())


# ------------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    status = EXIT_OK
    for path in args.recipes:
        try:
            loaded = load_recipe(path, args.set or ())
        except ConfigError as exc:
            _print_config_error(exc)
            status = EXIT_FAILED
        else:
            targets = ", ".join(loaded.recipe.targets)
            print(f"{path}: ok ({loaded.recipe.name}; targets: {targets})")
    return status


def cmd_plan(args: argparse.Namespace) -> int:
    from .graph import Pipeline

    pipeline = Pipeline(_load(args))
    rows = pipeline.plan()
    if args.json:
        doc = {"recipe": pipeline.recipe.name, "stages": rows, "not_applicable": pipeline.notices}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"plan: {pipeline.recipe.name}  ({pipeline.run_dir})")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("why")
    for row in rows:
        style = "yellow" if row["status"] == "run" else "green"
        table.add_row(row["stage"], f"[{style}]{row['status']}[/]", "; ".join(row["reasons"]))
    for name, why in pipeline.notices.items():
        table.add_row(name, "[dim]skipped[/]", why)
    _console().print(table)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .graph import Pipeline

    pipeline = Pipeline(_load(args))
    report = pipeline.run(only=args.only or (), force=args.force or ())
    console = _console()
    console.print(
        f"[bold]{pipeline.recipe.name}[/]: {len(report.executed)} executed, "
        f"{len(report.skipped)} up to date, {len(report.failed)} failed"
        + (f", {len(report.not_run)} not run" if report.not_run else "")
        + f"  → {pipeline.layout.summary_file}"
    )
    for name, why in report.failed.items():
        console.print(f"[red]  {name}: {why}[/]")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .graph import Pipeline

    pipeline = Pipeline(_load(args))
    rows = pipeline.status()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    table = Table(title=f"status: {pipeline.recipe.name}  ({pipeline.run_dir})")
    for col in ("stage", "done", "seconds", "metrics"):
        table.add_column(col)
    for row in rows:
        metrics = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(row["metrics"].items())[:4]
            if not isinstance(v, dict | list)
        )
        secs = f"{row['seconds']:.1f}" if row["seconds"] else ""
        table.add_row(row["stage"], "✓" if row["done"] else "·", secs, metrics)
    _console().print(table)
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    from .graph import Pipeline

    pipeline = Pipeline(_load(args))
    if args.stage:
        dropped = pipeline.clean(args.stage)
        print(f"cleaned: {', '.join(dropped)}")
        return EXIT_OK
    pipeline.layout.remove()
    print(f"removed {pipeline.run_dir}")
    return EXIT_OK


def cmd_targets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .targets import load_profiles

    profiles = load_profiles(args.profiles or ())
    if args.json:
        print(json.dumps({n: p.model_dump(mode="json") for n, p in profiles.items()}, indent=2))
        return EXIT_OK
    table = Table(title="target profiles")
    for col in ("name", "arch", "runtime", "precision", "transport", "threads", "description"):
        table.add_column(col)
    for name, p in sorted(profiles.items()):
        table.add_row(name, p.arch, p.runtime, p.precision, p.transport, str(p.threads), p.description)
    _console().print(table)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .recipe import recipe_schema

    text = json.dumps(recipe_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from .starter import starter_recipe

    path = Path(args.out or f"{args.name}.yaml")
    if path.exists() and not args.force:
        print(f"{path}: exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_USAGE
    path.write_text(starter_recipe(args.name), encoding="utf-8")
    print(f"wrote {path}; next: recipe validate {path} && recipe run {path}")
    return EXIT_OK


def cmd_data_preview(args: argparse.Namespace) -> int:
    """Run the data stage if needed, then draw a contact sheet of labelled images."""
    from .data.manifest import read_manifest
    from .data.preview import write_contact_sheet
    from .graph import Pipeline

    pipeline = Pipeline(_load(args))
    report = pipeline.run(only=["data"])
    if not report.ok:
        return EXIT_FAILED
    dataset = (pipeline.layout.result("data") or {})["artifacts"]["dataset"]
    records = [r for r in read_manifest(dataset["manifest"]) if r.split == args.split]
    out = Path(args.out or pipeline.layout.stage_dir("data") / f"preview_{args.split}.png")
    write_contact_sheet(records[: args.count], out)
    print(f"wrote {out} ({min(args.count, len(records))} {args.split} images)")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """Read images with a bundle through the device runtime (no torch involved)."""
    from .runtime.pipeline import predict_cli

    argv = ["--bundle", args.bundle, *args.images]
    if args.json:
        argv.append("--json")
    if args.precision:
        argv += ["--precision", args.precision]
    return int(predict_cli(argv))


def cmd_rollback(args: argparse.Namespace) -> int:
    """Switch hosts of a target back to their previous (or a named) release."""
    from .deploy.fleet import fleet_hosts, open_transport
    from .deploy.releases import rollback
    from .deploy.transport import DeployError
    from .recipe import load_recipe
    from .rundir import RunDir

    loaded = load_recipe(args.recipe, args.set or ())
    profile = loaded.profiles.get(args.target)
    if profile is None:
        print(f"error: {args.target!r} is not a target of this recipe", file=sys.stderr)
        return EXIT_USAGE
    deploy = loaded.recipe.deploy.get(args.target)
    install_dir = (deploy.install_dir if deploy and deploy.install_dir else None) or profile.install_dir
    local_root = RunDir(loaded.recipe.run_dir).local_releases(install_dir, args.target)
    hosts = [h for h in fleet_hosts(profile.transport, deploy) if args.host is None or h == args.host]
    if not hosts:
        print(f"error: no host {args.host!r} in deploy.{args.target}.hosts", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for host in hosts:
        try:
            with open_transport(host, install_dir, deploy, local_root) as t:
                release = rollback(t, args.to)
            print(f"{host or 'local'}: current -> {release[:12]}")
        except DeployError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    return status


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild RUN_DIR/report.html and report.md from what the stages last wrote."""
    from .graph import Pipeline

    pipeline = Pipeline(_load(args))
    if not pipeline.run_dir.is_dir():
        print(f"error: {pipeline.run_dir}: no run directory yet (recipe run first)", file=sys.stderr)
        return EXIT_FAILED
    html_path, md_path = pipeline.write_report()
    print(f"wrote {html_path} and {md_path}")
    return EXIT_OK


# ------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipe", description="Train, compress and ship an OCR model from one YAML recipe."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_recipe(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument(
            "--set", action="append", metavar="KEY.PATH=VALUE",
            help="override a recipe field (value parsed as YAML, validated like the file)",
        )

    p = sub.add_parser("validate", help="check recipes; exit 1 if any is invalid")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("plan", help="which stages would run, and why")
    with_recipe(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("run", help="run every stage that is not up to date")
    with_recipe(p)
    p.add_argument("--only", action="append", metavar="STAGE", help="run this stage (and what it needs)")
    p.add_argument("--force", action="append", metavar="STAGE", help="re-run this stage and its dependants")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("status", help="what each stage last produced")
    with_recipe(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("clean", help="remove the run directory (or one stage and its dependants)")
    with_recipe(p)
    p.add_argument("--stage", action="append", metavar="STAGE")
    p.set_defaults(fn=cmd_clean)

    p = sub.add_parser("targets", help="list target profiles")
    p.add_argument("--profiles", action="append", metavar="DIR", help="extra profile directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_targets)

    p = sub.add_parser("schema", help="print the recipe JSON Schema")
    p.add_argument("--out", metavar="FILE")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("init", help="write a commented starter recipe")
    p.add_argument("name")
    p.add_argument("--out", metavar="FILE")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("predict", help="read text in images with a built bundle")
    p.add_argument("--bundle", required=True, metavar="DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--precision", help="a candidate precision of the bundle (default: its active one)")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("rollback", help="switch a target's hosts back to the previous release")
    with_recipe(p)
    p.add_argument("--target", required=True)
    p.add_argument("--host", help="only this host (default: every host of the target)")
    p.add_argument("--to", metavar="RELEASE", help="a release hash prefix instead of the previous")
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("report", help="rebuild the run report (RUN_DIR/report.html, report.md)")
    with_recipe(p)
    p.set_defaults(fn=cmd_report)

    sub.add_parser(  # dispatched in main() to its own parser
        "prelabel", help="write a bundle's predictions as labels to correct (see `recipe prelabel -h`)"
    )

    sub.add_parser(  # dispatched in main() to runtime.serve's own parser
        "serve", help="serve a bundle over HTTP: POST /ocr, /metrics (see `recipe serve -h`)"
    )

    p = sub.add_parser("data", help="dataset tools: synth, preview")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    data_sub.add_parser(  # dispatched in main() to the generator's own parser
        "synth", help="generate a synthetic ICDAR2015 dataset (see `recipe data synth -h`)"
    )
    q = data_sub.add_parser("preview", help="PNG contact sheet of a recipe's labelled images")
    with_recipe(q)
    q.add_argument("--split", choices=("train", "val"), default="val")
    q.add_argument("--count", type=int, default=12)
    q.add_argument("--out", metavar="PNG")
    q.set_defaults(fn=cmd_data_preview)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .graph import GraphError
    from .rundir import RunBusy

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prelabel"]:  # its own argument parser: `recipe prelabel -h`
        from .prelabel import prelabel_cli

        return int(prelabel_cli(argv[1:]))
    if argv[:1] == ["serve"]:  # runtime.serve's own parser: `recipe serve --bundle DIR -h`
        from .runtime.serve import serve_cli

        return int(serve_cli(argv[1:], prog="recipe serve"))
    if argv[:2] == ["data", "synth"]:  # its own argument parser: `recipe data synth -h`
        from .data.synth_cli import synth_cli

        return int(synth_cli(argv[2:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except (GraphError, RunBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
