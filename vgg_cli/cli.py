"""The ``vgg`` command line. Commands are thin: parse, call one function, print.

TensorFlow/Keras are imported only inside the commands that need them, so ``vgg --help`` and
``vgg config show`` are instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import click

from vgg_cli import __version__
from vgg_cli.errors import EXIT_DATA, EXIT_NOINPUT, EXIT_NOT_PROMOTED, EXIT_TEMPFAIL, EXIT_USAGE, VggError

OVERRIDES_HELP = "KEY=VALUE overrides, e.g. data.train_dir=~/photos train.epochs=3 (values parsed as YAML)."


def load_frameworks(backend: str = "auto") -> None:
    """Import Keras once, on the backend ``vgg_cli.backend`` chooses (KERAS_BACKEND wins, else ``backend``, a
    train.backend value), keeping TensorFlow's native start-up chatter out of the terminal and cron logs.
    TensorFlow 2.21 prints some of it even at TF_CPP_MIN_LOG_LEVEL=3, so fd 2 is closed off during the import;
    set TF_CPP_MIN_LOG_LEVEL=0 (or 1) to see it."""
    if "keras" in sys.modules:
        return
    from vgg_cli.backend import apply

    why = apply(backend)
    logging.getLogger("vgg").debug("Keras backend: %s (%s)", os.environ["KERAS_BACKEND"], why)
    if os.environ["KERAS_BACKEND"] != "tensorflow":
        import keras  # noqa: F401
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1"):
        import keras  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the C++ runtime writes INFO lines to fd 2 before its log level applies
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # CUDA probing logs here on machines without a GPU
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _ConsoleHandler(logging.StreamHandler):
    """stderr logging that goes quiet when the reader has gone (`vgg train ... 2>&1 | head -2`): the run goes on and
    its exit code stands, instead of a '--- Logging error ---' report per line."""

    def handleError(self, record):
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            return
        super().handleError(record)

    def filter(self, record):  # a record logged with extra={"console": False} is for train.log only
        return getattr(record, "console", True) and super().filter(record)


def _emit(text: str, err: bool = False) -> None:
    """Print a command's result; a closed pipe is not an error of the command (its work is done and on disk)."""
    try:
        click.echo(text, err=err)
        (sys.stderr if err else sys.stdout).flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's exit-time flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (in-process tests)
        pass
    finally:
        os.close(devnull)


def _setup_logging(verbose: bool) -> None:
    log = logging.getLogger("vgg")
    handler = next((h for h in log.handlers if getattr(h, "_vgg_console", False)), None)
    if handler is None:
        handler = _ConsoleHandler(sys.stderr)
        handler._vgg_console = True
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    else:
        handler.setStream(sys.stderr)  # the current stderr (it differs between in-process invocations)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vgg")
def cli() -> None:
    """Transfer-learning trainer for VGG16/VGG19 image classifiers.

    \b
    vgg train data.train_dir=~/photos      train on a folder with one subfolder per class
    vgg predict image.jpg                  label images with the production (else newest) run
    vgg summary                            show the model the config builds
    vgg config show                        print the resolved configuration
    vgg config defaults > my.yaml          every key, documented; edit, then vgg train --config my.yaml
    vgg train --config my.yaml --if-changed   the nightly cron job (resumes, skips, promotes only if better)
    vgg runs | vgg promote RUN | vgg rollback   production model management
    vgg check ~/photos                     find unreadable files, duplicates and imbalance, without training
    vgg evaluate [DATA_DIR]                accuracy, per-class report, confusion matrix (default: validation split)
    vgg lr-find data.train_dir=~/photos    learning-rate range test: a suggested rate and its plot
    vgg export --format onnx               SavedModel / TFLite / ONNX, checked against Keras in its runtime

    Exit codes: 0 ok, 3 trained but not promoted, 64 usage, 65 data, 66 missing input, 69 optional package
    missing, 70 internal, 74 I/O, 75 locked or interrupted, 78 config.
    """


config_option = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
                             help="YAML file merged over the defaults (configs/default.yaml).")


@cli.command(short_help="Train a classifier on a folder of images.")
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
    from vgg_cli.config import load_config

    command = "vgg train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "vgg train"
    overrides = _dataset_argument(overrides)
    if resume and "=" in resume and not os.path.isdir(os.path.expanduser(resume)):
        overrides, resume = (resume, *overrides), ""  # `--resume output.dir=X`: a bare --resume, then an override
    try:
        cfg = load_config(config_path, overrides)
        if resume is not None and if_changed:
            raise click.UsageError("--resume and --if-changed do not go together")
        if resume is not None and any(not o.startswith("output.dir=") for o in overrides):
            raise click.UsageError("--resume continues a run with its own config.yaml; drop the KEY=VALUE "
                                   "overrides (only output.dir=..., where to look, is allowed)")
        _setup_logging(verbose)
        run_dir = _resume_target(resume, cfg.output.dir) if resume is not None else None
        if run_dir is None:
            from vgg_cli.data.scan import require_dir

            require_dir(cfg.data.train_dir, "data.train_dir")  # a mistyped path makes no runs folder
        # The lock before the framework: a second run on the same output.dir exits 75 at once, not after Keras'
        # seconds of start-up. A multi-worker job's workers decide who locks once the backend knows its role.
        with _early_lock(run_dir.parent if run_dir else Path(cfg.output.dir), cfg, command):
            load_frameworks(_run_backend(run_dir) if run_dir is not None else cfg.train.backend)
            from vgg_cli import train as t

            # stdout carries only the result; anything a library prints goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                if run_dir is not None:
                    result = t.resume_training(run_dir, command)
                else:
                    result = t.run_training(cfg, if_changed=if_changed, command=command)
    except VggError as e:
        if as_json:
            _echo_json({"status": "error", "exit_code": e.exit_code, "error": str(e)})
        raise
    code = EXIT_NOT_PROMOTED if result.promoted is False else 0
    if as_json:
        _echo_json(_train_json(result, code))
    elif result.status == t.WORKER_DONE:  # a multi-worker job's other worker: the chief prints the run
        _emit(f"worker done: the chief wrote the run in {result.run_dir}", err=True)
    else:
        _emit(str(result.run_dir))
    return code  # the "not promoted: ..." reason was logged by the decision itself


def _run_backend(run_dir) -> str:
    """The train.backend a run to resume was started with (its config.yaml; auto when it predates the key)."""
    import yaml

    from vgg_cli.config import yaml_load

    try:
        tree = yaml_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
        return str(tree["train"].get("backend", "auto"))
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return "auto"  # a damaged config.yaml is reported by the resume itself


def _train_json(result, code: int) -> dict:
    """`vgg train --json`'s one line."""
    s = result.summary
    return {"status": result.status, "exit_code": code, "run": str(result.run_dir.resolve()),
            "promoted": result.promoted, "promotion": s.get("promotion") if result.status == "trained" else None,
            "run_status": s.get("status"), "epochs_run": s.get("epochs_run"), "monitor": s.get("monitor"),
            "best": s.get("best"), "images": s.get("images"), "classes": s.get("classes"),
            "fingerprint": s.get("fingerprint"), "health": (s.get("health") or {}).get("status")}


def _dataset_argument(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """`vgg train DIR ...` (the yolo/fastai habit): an existing folder as the first argument is data.train_dir."""
    if overrides and "=" not in overrides[0] and os.path.isdir(os.path.expanduser(overrides[0])):
        return (f"data.train_dir={overrides[0]}", *overrides[1:])
    return overrides


@contextlib.contextmanager
def _early_lock(runs_dir: Path, cfg, command: str):
    """Hold ``<runs_dir>/.lock`` (re-entered, not re-taken, by the training code), except for a multi-worker job."""
    from vgg_cli.distribute import multi_process_env
    from vgg_cli.runs import runs_lock

    if cfg.train.distribute in ("auto", "multi_worker") and multi_process_env():
        yield  # the chief locks once it knows it is the chief; the others never lock
        return
    with runs_lock(runs_dir, command) as stale:
        if stale:
            logging.getLogger("vgg").warning("took over the lock of a vgg run that is no longer running (%s)", stale)
        yield


def _resume_target(resume: str, runs_dir: str):
    from vgg_cli.errors import NoInputError
    from vgg_cli.runs import find_resumable

    if resume == "":
        return find_resumable(Path(runs_dir))
    p = Path(os.path.expanduser(resume))
    if p.is_dir():
        return p.resolve()
    if (Path(runs_dir) / resume).is_dir():
        return (Path(runs_dir) / resume).resolve()
    raise NoInputError(f"--resume {resume!r}: no such run directory (looked in {runs_dir!r} too)")


def _echo_json(obj: dict) -> None:
    import json

    _emit(json.dumps(obj, ensure_ascii=False, default=str))


@cli.command(short_help="Label images with a trained model.")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option("--run", "run", help="Run directory (or its name in --runs-dir). Default: production, else latest.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False), help="A .keras model file instead of a run.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where runs live (output.dir).")
@click.option("--top-k", "-k", default=1, show_default=True, type=click.IntRange(min=1), help="Labels per image.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="json: one object per line (for jq).")
@click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("-v", "--verbose", is_flag=True, help="Print timings (import, model load, prediction) to stderr.")
def predict(inputs: tuple[str, ...], run: str | None, model_file: str | None, runs_dir: str, top_k: int, fmt: str,
            batch_size: int, verbose: bool) -> int:
    """Label images with a trained model.

    Folders are walked recursively. An unreadable file gets its own row with the error while the others are
    predicted; the exit code is then 65.
    """
    if run is not None and model_file is not None:
        raise click.UsageError("give either --run or --model, not both")
    from vgg_cli.predict import NOT_FOUND, expand_inputs, resolve_model_file

    files = expand_inputs(inputs)
    if not files:
        from vgg_cli.errors import NoInputError

        raise NoInputError(f"no image files found in {', '.join(inputs)}; pass image files or folders of images")
    path = resolve_model_file(run, model_file, runs_dir)
    import time

    t0 = time.perf_counter()
    load_frameworks()
    from vgg_cli.model_io import load_model
    from vgg_cli.predict import format_results, predict_files

    t1 = time.perf_counter()
    model = load_model(path)
    t2 = time.perf_counter()
    results = predict_files(model, files, top_k, batch_size)
    t3 = time.perf_counter()
    click.echo(f"model: {path}", err=True)  # which run answered (production moves under cron)
    click.echo(format_results(results, fmt, top_k), nl=False)
    if verbose:
        click.echo(f"timings: import {t1 - t0:.2f}s, model load {t2 - t1:.2f}s ({path}), predict {t3 - t2:.2f}s for "
                   f"{len(files)} file(s) ({len(files) / (t3 - t2):.1f} img/s, decoding overlapped with inference)",
                   err=True)
    failed = [r for r in results if r.error is not None]
    if failed:
        click.echo(f"error: {len(failed)} of {len(results)} input(s) could not be read (see their rows)", err=True)
        if len(failed) == len(results) and all(r.error == NOT_FOUND for r in failed):
            return EXIT_NOINPUT
        return EXIT_DATA
    return 0


def _model_of(run: str | None, model_file: str | None, runs_dir: str):
    """(model file, its run directory or None) from --run / --model, as evaluate and export take them: a run
    defaults to production, else latest."""
    from pathlib import Path

    from vgg_cli.runs import find_model_file, resolve_run

    if run is not None and model_file is not None:
        raise click.UsageError("give either --run or --model, not both")
    if model_file is not None:
        from vgg_cli.predict import resolve_model_file

        return resolve_model_file(None, model_file, runs_dir), None
    run_dir = resolve_run(run, Path(runs_dir))
    return find_model_file(run_dir), run_dir


@cli.command(short_help="Measure a trained model: accuracy, per-class report, confusion matrix.")
@click.argument("data_dir", required=False)
@click.option("--run", "run", help="Run directory (or its name in --runs-dir). Default: production, else latest.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="A .keras model file instead of a run (then DATA_DIR is required).")
@click.option("--runs-dir", default="runs", show_default=True, help="Where runs live (output.dir).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the report files. Default: <run>/evaluation/<val or DATA_DIR's name>.")
@click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def evaluate(data_dir: str | None, run: str | None, model_file: str | None, runs_dir: str, out_dir: str | None,
             batch_size: int, as_json: bool) -> int:
    """Evaluate a trained model on its run's validation split (default) or on DATA_DIR, a folder with one
    subfolder per class (matched to the model's classes by name; an unknown class folder is an error, a missing
    one is reported).

    \b
    Prints accuracy, top-5 accuracy (more than 5 classes), per-class precision/recall/F1/support and the
    confusion matrix; writes report.json, per_class.csv, confusion_matrix.csv, confusion_matrix.png,
    confusion_matrix_normalised.png and misclassified.csv (with each file's top predictions).
    """
    from pathlib import Path

    if model_file is not None and run is None and data_dir is None:
        raise click.UsageError("--model FILE needs DATA_DIR (only a run directory knows its validation split)")
    path, run_dir = _model_of(run, model_file, runs_dir)
    if data_dir is not None and not os.path.isdir(os.path.expanduser(data_dir)):
        from vgg_cli.errors import NoInputError

        raise NoInputError(f"DATA_DIR {data_dir!r} is not a folder; pass a folder with one subfolder per class")
    name = "val" if data_dir is None else (Path(os.path.expanduser(data_dir)).resolve().name or "data")
    out = Path(out_dir) if out_dir else (run_dir / "evaluation" / name if run_dir else Path("evaluation") / name)
    _setup_logging(False)
    load_frameworks()
    from vgg_cli import evaluate as ev
    from vgg_cli.model_io import class_names_of, image_size_of, load_model

    model = load_model(path)
    if data_dir is None:
        data = ev.validation_set(run_dir)
    else:
        data = ev.folder_set(os.path.expanduser(data_dir), class_names_of(model), image_size_of(model))
    if data.missing_classes:
        click.echo(f"warning: no images of class(es) {data.missing_classes} in the {data.source}", err=True)
    for s in data.skipped:
        click.echo(f"warning: skipped {s['path']}: {s['reason']}", err=True)
    with contextlib.redirect_stdout(sys.stderr):
        report = ev.evaluate(model, path, data, out, batch_size)
    if as_json:
        _echo_json(report)
    else:
        click.echo(ev.format_report(report), nl=False)
    return 0


@cli.command(short_help="Export a trained model: SavedModel, TFLite or ONNX.")
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite", "onnx"]), default=None,
              help="(required) saved_model: TF Serving; tflite: LiteRT on devices; onnx: onnxruntime and friends.")
@click.option("--run", "run", help="Run directory (or its name in --runs-dir). Default: production, else latest.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False), help="A .keras model file instead of a run.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where runs live (output.dir).")
@click.option("--out", "out_path", type=click.Path(),
              help="Where to write it. Default: <run>/export/saved_model, model.tflite or model.onnx.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def export(fmt: str, run: str | None, model_file: str | None, runs_dir: str, out_path: str | None,
           as_json: bool) -> int:
    """Export a trained model for serving, then load the export in its own runtime (tf.saved_model.load, the
    TFLite interpreter, onnxruntime) and check that it gives the Keras model's probabilities (max difference
    1e-4) before it replaces anything.

    \b
    Every format takes float32 [N, S, S, 3] raw RGB pixels 0-255 (S = the run's data.image_size; VGG
    preprocessing is inside) and returns class probabilities. Class names travel with it: the SavedModel
    signature also returns class_index and class_name, and has assets.extra/labels.txt; TFLite and ONNX get
    <name>.labels.txt beside the file (ONNX also in its metadata, class_names).
    """
    if fmt is None:
        from vgg_cli.errors import UsageError

        raise UsageError("vgg export needs --format saved_model, tflite or onnx (e.g. vgg export --format onnx)")
    from pathlib import Path

    from vgg_cli.export import DEFAULT_NAMES
    path, run_dir = _model_of(run, model_file, runs_dir)
    default_root = (run_dir or path.parent) / "export"
    out = Path(os.path.expanduser(out_path)) if out_path else default_root / DEFAULT_NAMES[fmt]
    _setup_logging(False)
    load_frameworks()
    from vgg_cli.export import export_model
    from vgg_cli.model_io import load_model

    with contextlib.redirect_stdout(sys.stderr):
        report = export_model(load_model(path), fmt, out)
    if as_json:
        _echo_json(report)
    else:
        click.echo(report["path"])
        click.echo(f"{fmt}: {report['bytes'] / 2**20:.1f} MiB; input {report['input']['description']}; labels in "
                   f"{report['labels']}; checked in {report['runtime']}: max |difference| from Keras "
                   f"{report['max_abs_diff']:.2g} on {report['probe_images']} probe images", err=True)
    return 0


@cli.command("lr-find", short_help="Learning-rate range test: plot and a suggested rate.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
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

    from vgg_cli.config import load_config

    if start >= end:
        raise click.UsageError(f"--start {start:g} must be below --end {end:g}")
    cfg = load_config(config_path, overrides)
    _setup_logging(verbose)
    load_frameworks(cfg.train.backend)
    from vgg_cli.lrfind import lr_find as run_lr_find

    with contextlib.redirect_stdout(sys.stderr):
        result = run_lr_find(cfg, steps, start, end, Path(out_dir) if out_dir else Path(cfg.output.dir) / "lr-find")
    if as_json:
        _echo_json(result)
        return 0
    rate = result["suggested_learning_rate"]
    click.echo(f"suggested learning rate: {rate:.2g} (steepest fall of the loss)" if rate is not None else
               "suggested learning rate: none (the loss never fell; try a lower --start or check the data)")
    if result["min_loss_rate_div10"] is not None:
        click.echo(f"rate at the lowest loss / 10: {result['min_loss_rate_div10']:.2g}")
    click.echo(f"{result['steps']} steps, stopped: {result['stopped']}")
    click.echo(f"plot: {result['files']['plot']}  (also lr_find.csv, lr_find.json)")
    return 0


@cli.command(short_help="Show the model's layers, parameters and frozen blocks.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--original", type=click.Choice(["vgg16", "vgg19"]),
              help="Show the paper's full network with its 1000-way ImageNet top instead.")
def summary(config_path: str | None, overrides: tuple[str, ...], original: str | None) -> int:
    """Print the model's layers, output shapes, parameter counts and trainable flags (no weights loaded)."""
    from vgg_cli.config import load_config

    cfg = load_config(config_path, overrides)
    load_frameworks()
    from vgg_cli import model as m

    if original:
        m.original_vgg(original).summary(print_fn=lambda s, **_: click.echo(s))
        return 0
    classes, note = _summary_classes(cfg)
    model, _ = m.build_model(cfg.model, cfg.data.image_size, classes, load_weights=False, augment=cfg.augment)
    model.summary(expand_nested=True, show_trainable=True, print_fn=lambda s, **_: click.echo(s))
    backbone = model.get_layer(cfg.model.arch)
    for block, convs in m.conv_layers_by_block(backbone).items():
        params = sum(layer.count_params() for layer in convs)
        state = "frozen" if block in cfg.model.freeze_blocks else "trainable"
        click.echo(f"block{block}: {len(convs)} conv layers, {params:,} params, {state}")
    click.echo(f"head: {len(classes)} classes ({note}); weights would come from: {cfg.model.weights}")
    return 0


def _summary_classes(cfg) -> tuple[list[str], str]:
    if cfg.data.classes:
        return list(cfg.data.classes), "data.classes"
    root = cfg.data.train_dir
    if os.path.isdir(root):
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if len(names) >= 2:
            return names, f"class folders in {root}"
    return ["class_0", "class_1"], f"placeholder: {root} has no class folders yet"


@cli.command(short_help="Check a dataset folder without training.")
@click.argument("data_dir", required=False)
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--min-side", default=32, show_default=True, type=click.IntRange(min=1),
              help="Report images smaller than this many pixels on a side.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def check(data_dir: str | None, config_path: str | None, overrides: tuple[str, ...], min_side: int,
          as_json: bool) -> int:
    """Classes and counts, imbalance, unreadable files with reasons, exact duplicates across classes or across
    train/val, suspiciously small images. DATA_DIR defaults to data.train_dir. Exit 0 when there is nothing to fix
    (warnings allowed), 65 when there are errors. Per-file results are cached in <output.dir>/.cache."""
    from pathlib import Path

    from vgg_cli.check import check_dataset, format_report
    from vgg_cli.config import load_config

    if data_dir and "=" in data_dir and not os.path.isdir(data_dir):
        overrides, data_dir = (data_dir, *overrides), None
    cfg = load_config(config_path, (*overrides, *([f"data.train_dir={data_dir}"] if data_dir else [])))
    result = check_dataset(cfg.data, Path(cfg.output.dir) / ".cache", min_side)
    if as_json:
        _echo_json(result)
    else:
        click.echo(format_report(result), nl=False)
    return EXIT_DATA if result["errors"] else 0


runs_dir_option = click.option("--runs-dir", default="runs", show_default=True, help="Where runs live (output.dir).")


@cli.command("runs", short_help="List runs: date, images, classes, best metric, production.")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def runs_command(runs_dir: str, as_json: bool) -> int:
    """List the runs in --runs-dir, oldest first. P marks production, L latest."""
    from pathlib import Path

    from vgg_cli.promote import list_runs

    rows = list_runs(Path(runs_dir))
    if as_json:
        for r in rows:
            _echo_json(r)
        return 0
    if not rows:
        click.echo(f"no runs in {runs_dir}", err=True)
        return 0
    width = max(len(r["run"]) for r in rows)
    click.echo(f"   {'run':<{width}}  {'started':<25}  {'status':<13}  {'images':>6}  {'classes':>7}  "
               f"{'promoted':<8}  best")
    for r in rows:
        mark = ("P" if r["production"] else " ") + ("L" if r["latest"] else " ")
        best = f"{r['monitor']} {r['best']:.4f}" if r["best"] is not None else "-"
        click.echo(f"{mark} {r['run']:<{width}}  {str(r['started'] or '-'):<25}  {str(r['status']):<13}  "
                   f"{str(r['images'] or '-'):>6}  {str(r['classes'] or '-'):>7}  {'yes' if r['promoted'] else 'no':<8}  "
                   f"{best}")
    return 0


@cli.command(short_help="Make a run the production model.")
@click.argument("run")
@runs_dir_option
def promote(run: str, runs_dir: str) -> int:
    """Point <runs-dir>/production at RUN (a run name or folder), without evaluation. `vgg rollback` undoes it."""
    from pathlib import Path

    from vgg_cli.promote import promote_run
    from vgg_cli.runs import resolve_run, runs_lock

    _setup_logging(False)
    with runs_lock(Path(runs_dir), "vgg promote"):
        promote_run(Path(runs_dir), resolve_run(run, Path(runs_dir)))
    return 0


@cli.command(short_help="Put the previous production model back.")
@runs_dir_option
def rollback(runs_dir: str) -> int:
    """Point <runs-dir>/production back at the run it replaced last."""
    from pathlib import Path

    from vgg_cli.promote import rollback as do_rollback
    from vgg_cli.runs import runs_lock

    _setup_logging(False)
    with runs_lock(Path(runs_dir), "vgg rollback"):
        click.echo(do_rollback(Path(runs_dir)))
    return 0


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("defaults", short_help="Print the documented default config (to copy and edit).")
def config_defaults() -> int:
    """Print configs/default.yaml with its comments: every key, its type and meaning.

    \b
    vgg config defaults > my.yaml     # edit, keep only what you change, then: vgg train --config my.yaml
    """
    from importlib import resources

    click.echo(resources.files("vgg_cli").joinpath("default.yaml").read_text(encoding="utf-8"), nl=False)
    return 0


@config_group.command("show", short_help="Print the resolved configuration as YAML.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> int:
    """Print the resolved configuration (defaults <- --config file <- KEY=VALUE) as YAML."""
    from vgg_cli.config import load_config

    click.echo(load_config(config_path, overrides).to_yaml(), nl=False)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line and a documented exit code."""
    try:
        rv = cli.main(args=argv, prog_name="vgg", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help())
        sys.exit(0)
    except click.UsageError as e:
        where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else "; see 'vgg --help'"
        click.echo(f"error: {e.format_message().rstrip('.')}{where}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort as e:  # Click turns Ctrl-C outside our own handling into Abort
        what = "interrupted" if isinstance(e.__context__, KeyboardInterrupt) else "aborted"
        click.echo(f"error: {what}", err=True)
        sys.exit(EXIT_TEMPFAIL)
    except VggError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_TEMPFAIL)
    except BrokenPipeError:  # the reader of our output went away (`vgg predict DIR | head`): no traceback
        _silence_stdout()
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
