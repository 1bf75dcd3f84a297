"""`vgg train` and `vgg lr-find`: the commands that train."""

from __future__ import annotations

import os
import sys

import click

from vgg_cli.cli.common import config_option, dataset_argument, echo_json, emit, model_work, setup_logging
from vgg_cli.errors import EXIT_NOT_PROMOTED, VggError
from vgg_cli.runs.summary import Outcome


@click.command(short_help="Train a classifier on a folder of images.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[DIR] [KEY=VALUE]...")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[RUN]",
              help="Continue an unfinished run (default: the newest one in output.dir) from its last epoch.")
@click.option("--if-changed", is_flag=True,
              help="Do nothing (exit 0) when the dataset and config equal those of runs/latest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary line on stdout instead of the run dir.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
def train(config_path: str | None, overrides: tuple[str, ...], resume: str | None, if_changed: bool, as_json: bool,
          verbose: bool) -> int:
    """Train a classifier on a folder dataset and write a run directory.

    \b
    KEY=VALUE arguments override the config, e.g.
      vgg train data.train_dir=~/photos train.epochs=3 model.freeze_blocks=[1,2,3]
    Values are YAML. Every key, with its meaning: `vgg config defaults`. An existing folder as the first
    argument is the dataset: `vgg train ~/photos train.epochs=3` is data.train_dir=~/photos.

    \b
    For cron: one run at a time per output.dir (a second exits 75 at once); --if-changed skips unchanged data;
    a run stopped by SIGINT/SIGTERM/SIGKILL continues with --resume.

    Prints the run directory on stdout (or, with --json, one summary line); progress and logs go to stderr.
    """
    from vgg_cli.config.schema import load_config

    command = "vgg train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "vgg train"
    overrides = dataset_argument(overrides)
    if resume and "=" in resume and not os.path.isdir(os.path.expanduser(resume)):
        overrides, resume = (resume, *overrides), ""  # `--resume output.dir=X`: a bare --resume, then an override
    try:
        cfg = load_config(config_path, overrides)
        if resume is not None and if_changed:
            raise click.UsageError("--resume and --if-changed do not go together")
        if resume is not None:
            _check_resume_overrides(overrides)
        setup_logging(verbose)
        from vgg_cli.job.lifecycle import open_job, run

        job = open_job(cfg, resume, if_changed, overrides, command)
        with model_work(verbose, frameworks=False):  # (the job loads Keras once it holds the lock)
            result = run(job)
    except VggError as e:
        if as_json:
            echo_json({"status": "error", "exit_code": e.exit_code, "error": str(e)})
        raise
    code = EXIT_NOT_PROMOTED if result.promoted is False else 0
    from vgg_cli.job.lifecycle import results as run_results

    results = run_results(result.run_dir) if result.status == Outcome.TRAINED else {}
    if as_json:
        echo_json({**_train_json(result, code), **results})
    elif result.status == Outcome.WORKER_DONE:  # a multi-worker job's other worker: the chief prints the run
        emit(f"worker done: the chief wrote the run in {result.run_dir}", err=True)
    else:
        if results:
            emit(results_table(results), err=True)
        emit(str(result.run_dir.resolve()))  # absolute, whether output.dir was given relative or not
    return code  # the "not promoted: ..." reason was logged by the decision itself


def results_table(results: dict) -> str:
    """The end of `vgg train`: its evaluations as a few lines (stderr; stdout stays the run directory)."""
    lines = []
    for name, r in results["results"].items():
        top5 = f"  top-5 {r['top5_accuracy']:.4f}" if r.get("top5_accuracy") is not None else ""
        worst = ", ".join(f"{c['class']} (recall {c['recall']:.2f}, {c['support']} images)"
                          for c in r["worst_classes"]) or "none (every class at recall 1.00)"
        lines.append(f"{'validation' if name == 'val' else name:<10}  {r['images']:>5} images  accuracy "
                     f"{r['accuracy']:.4f}{top5}  worst: {worst}")
    if results.get("report"):
        lines.append(f"report: {results['report']}")
    return "\n".join(lines)


def _train_json(result, code: int) -> dict:
    """`vgg train --json`'s one line."""
    s = result.summary
    return {"status": result.status.value, "exit_code": code, "run": str(result.run_dir.resolve()),
            "promoted": result.promoted, "promotion": s.promotion if result.status == Outcome.TRAINED else None,
            "run_status": s.status.value if s.status else None, "epochs_run": s.epochs_run,
            "monitor": s.monitor, "best": s.best, "images": s.images or None, "classes": s.classes or None,
            "fingerprint": s.fingerprint, "health": s.health_status}


def _check_resume_overrides(overrides: tuple[str, ...]) -> None:
    from vgg_cli.training import RESUME_OVERRIDES

    bad = [o for o in overrides if o.partition("=")[0].strip() not in RESUME_OVERRIDES]
    if bad:
        raise click.UsageError(f"--resume continues a run with its own config.yaml; drop {bad[0][:80]!r} (only "
                               f"{', '.join(RESUME_OVERRIDES)}, which say where things are written, are allowed)")


@click.command("lr-find", short_help="Learning-rate range test: plot and a suggested rate.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[DIR] [KEY=VALUE]...")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=10, max=10000),
              help="Training steps (batches) at most.")
@click.option("--start", default=1e-7, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="First learning rate.")
@click.option("--end", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Last learning rate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for lr_find.png/.csv/.json. Default: <output.dir>/lr-find.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
def lr_find(config_path: str | None, overrides: tuple[str, ...], steps: int, start: float, end: float,
            out_dir: str | None, as_json: bool, verbose: bool) -> int:
    """Train the model the config builds (phase 1: model.freeze_blocks, train.optimizer) for up to --steps batches
    while the learning rate grows exponentially from --start to --end; stop when the loss diverges. Prints the
    rate where the loss fell fastest (a good train.optimizer.learning_rate) and writes the loss-vs-rate plot.
    Nothing is added to the runs."""
    from pathlib import Path

    from vgg_cli.config.schema import load_config
    from vgg_cli.job.lifecycle import check_dataset_layout
    from vgg_cli.runs.root import RunsRoot

    if start >= end:
        raise click.UsageError(f"--start {start:g} must be below --end {end:g}")
    cfg = load_config(config_path, dataset_argument(overrides))
    check_dataset_layout(cfg)
    runs = RunsRoot.of(cfg)
    with model_work(verbose, cfg.train.backend):
        from vgg_cli.training.lrfind import lr_find as run_lr_find

        result = run_lr_find(cfg, runs, steps, start, end, Path(out_dir) if out_dir else runs.lr_find)
    if as_json:
        echo_json(result)
        return 0
    for line in result["advice"]:  # the suggestion (or why there is none, and what to do), the checks on it
        click.echo(line)
    click.echo(f"{result['steps']} steps, stopped: {result['stopped']}")
    click.echo(f"plot: {result['files']['plot']}  (also lr_find.csv, lr_find.json)")
    return 0


