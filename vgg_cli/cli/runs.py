"""Commands about runs and data, without training: runs, promote, rollback, check, config."""

from __future__ import annotations

import os

import click

from vgg_cli.cli.common import (
    config_option,
    dataset_argument,
    echo_json,
    load_frameworks,
    runs_dir_option,
    setup_logging,
)
from vgg_cli.errors import EXIT_DATA


@click.command(short_help="Check a dataset folder (or a trained run's labels) without training.")
@click.argument("data_dir", required=False)
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--min-side", default=32, show_default=True, type=click.IntRange(min=1),
              help="Report images smaller than this many pixels on a side.")
@click.option("--labels", "labels_run", metavar="RUN",
              help="Rank the suspected label errors of a trained run (a run folder, latest or production): "
                   "written to RUN/label_issues.csv and printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def check(data_dir: str | None, config_path: str | None, overrides: tuple[str, ...], min_side: int,
          labels_run: str | None, as_json: bool) -> int:
    """Classes and counts, imbalance, unreadable files with reasons, duplicates (exact and near copies) across
    classes or across train/val, suspiciously small images. DATA_DIR defaults to data.train_dir. Exit 0 when there
    is nothing to fix (warnings allowed), 65 when there are errors. Per-file results are cached in
    <output.dir>/.cache.

    --labels RUN: confident learning on out-of-sample probabilities (the run's validation images; its training
    images too when it trained head-only), most suspect first; with DATA_DIR, the dataset is checked as well."""
    from vgg_cli.config.schema import load_config
    from vgg_cli.data.audit import check_dataset, format_report
    from vgg_cli.runs.root import RunsRoot

    if data_dir and "=" in data_dir and not os.path.isdir(data_dir):
        overrides, data_dir = (data_dir, *overrides), None
    cfg = load_config(config_path, (*overrides, *(dataset_argument((data_dir,)) if data_dir else ())))
    result = check_dataset(cfg, RunsRoot.of(cfg).cache, min_side) if data_dir or not labels_run else None
    labels = None
    if labels_run:
        load_frameworks()  # quietly: no TensorFlow start-up lines before the report
        labels = _label_issues(RunsRoot.of(cfg), labels_run)
    if as_json:
        echo_json({**(result or {}), **({"label_issues": labels} if labels else {})})
    else:
        if result is not None:
            click.echo(format_report(result), nl=False)
        if labels is not None:
            from vgg_cli.evaluation.suspects import format_suspects

            click.echo(format_suspects(labels), nl=False)
    return EXIT_DATA if result and result["errors"] else 0


def _label_issues(runs, run: str) -> dict:
    from pathlib import Path

    from vgg_cli.errors import NoInputError
    from vgg_cli.evaluation.suspects import find_run_label_issues
    from vgg_cli.runs.rundir import RunDir

    path = runs.path / run if run in ("latest", "production") else Path(run)
    if not RunDir(path).is_complete():
        raise NoInputError(f"--labels {run!r} is not a run folder (no config.yaml, data.json and run.json in "
                           f"{str(path)!r}); pass a trained run's folder, latest or production")
    return find_run_label_issues(path.resolve())


@click.command("runs", short_help="List runs: date, images, classes, best metric, production.")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def runs_command(runs, as_json: bool) -> int:
    """List the runs in --runs-dir, oldest first (in the order they were made). P marks production now, L latest;
    "production" says whether a run is production now, was before (replaced, or rolled back) or never was."""
    from vgg_cli.promotion.production import list_runs

    rows = list_runs(runs)
    if as_json:
        for r in rows:
            echo_json(r)
        return 0
    if not rows:
        click.echo(f"no runs in {runs.path}", err=True)
        return 0
    width = max(len(r["run"]) for r in rows)
    click.echo(f"   {'run':<{width}}  {'started':<25}  {'status':<13}  {'images':>6}  {'classes':>7}  "
               f"{'production':<10}  best")
    for r in rows:
        mark = ("P" if r["production"] else " ") + ("L" if r["latest"] else " ")
        best = f"{r['monitor']} {r['best']:.4f}" if r["best"] is not None else "-"
        production = "now" if r["production"] else "before" if r["promoted"] else "no"
        click.echo(f"{mark} {r['run']:<{width}}  {str(r['started'] or '-'):<25}  {str(r['status']):<13}  "
                   f"{str(r['images'] or '-'):>6}  {str(r['classes'] or '-'):>7}  {production:<10}  {best}")
    return 0


@click.command(short_help="Make a run the production model.")
@click.argument("run")
@runs_dir_option
def promote(run: str, runs) -> int:
    """Point <runs-dir>/production at RUN (a run name or folder), without evaluation. `vgg rollback` undoes it."""
    from vgg_cli.promotion.production import promote_run

    setup_logging(False)
    with runs.lock("vgg promote"):
        promote_run(runs, runs.resolve(run))
    return 0


@click.command(short_help="Put the previous production model back.")
@runs_dir_option
def rollback(runs) -> int:
    """Point <runs-dir>/production back at the run it replaced last."""
    from vgg_cli.promotion.production import rollback as do_rollback

    setup_logging(False)
    with runs.lock("vgg rollback"):
        click.echo(do_rollback(runs))
    return 0


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("defaults", short_help="Print the documented default config (to copy and edit).")
def config_defaults() -> int:
    """Print configs/default.yaml with its comments: every key, its type and meaning.

    \b
    vgg config defaults > my.yaml     # edit, keep only what you change, then: vgg train --config my.yaml
    """
    from importlib import resources

    click.echo(resources.files("vgg_cli.config").joinpath("default.yaml").read_text(encoding="utf-8"), nl=False)
    return 0


@config_group.command("show", short_help="Print the resolved configuration as YAML.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[DIR] [KEY=VALUE]...")
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> int:
    """Print the resolved configuration (defaults <- --config file <- KEY=VALUE) as YAML; a first argument that is
    not KEY=VALUE is the dataset folder, as for `vgg train`."""
    from vgg_cli.config.schema import load_config

    click.echo(load_config(config_path, dataset_argument(overrides)).to_yaml(), nl=False)
    return 0


