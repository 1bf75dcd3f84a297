"""Commands that use a trained model: predict, evaluate, export; and summary, the model a config builds."""

from __future__ import annotations

import os

import click

from vgg_cli.cli.common import config_option, echo_json, load_frameworks, model_work, run_option, runs_dir_option
from vgg_cli.errors import EXIT_DATA, EXIT_NOINPUT


@click.command(short_help="Label images with a trained model.")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@run_option
@click.option("--model", "model_file", type=click.Path(dir_okay=False), help="A .keras model file instead of a run.")
@runs_dir_option
@click.option("--top-k", "-k", default=1, show_default=True, type=click.IntRange(min=1), help="Labels per image.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="json: one object per line (for jq).")
@click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--tta", type=click.Choice(["none", "flip", "shift", "flip+shift"]), default="none", show_default=True,
              help="Test-time augmentation: average over a mirrored and/or four shifted copies (see README).")
@click.option("--gradcam", "cam_dir", type=click.Path(file_okay=False),
              help="Write Grad-CAM heatmaps here: <name>.gradcam.png (over the image) and .npy (the raw map).")
@click.option("--cam-class", help="Explain this class instead of each image's top class (with --gradcam).")
@click.option("--cam-layer", help="Conv layer for --gradcam. Default: the backbone's last (block5_conv3 in VGG16).")
@click.option("--min-probability", type=click.FloatRange(0, 1), default=None,
              help="Answer unknown when the top probability is below this (as well as beyond the run's "
                   "out-of-distribution threshold).")
@click.option("--uncalibrated", is_flag=True, help="Raw probabilities: softmax of the logits, without the run's "
              "temperature.")
@click.option("--engine", type=click.Choice(["auto", "numpy", "keras"]), default="auto", show_default=True,
              help="numpy: a forward pass without TensorFlow (starts ~4x faster; for a few images); keras: the "
                   "model in Keras; auto: numpy for a few images when it reproduces the model (see README).")
@click.option("--strict", is_flag=True, help=f"Exit {EXIT_DATA} when any input cannot be read (default: 0 while "
              "any was answered; the others are named on stderr and in their rows).")
@click.option("-v", "--verbose", is_flag=True, help="Print timings (import, model load, prediction) to stderr.")
def predict(runs, verbose: bool, fmt: str, strict: bool, **asked) -> int:
    """Label images with a trained model.

    Folders are walked recursively. An unreadable file gets its own row with the error while the others are
    predicted; it is named on stderr and the exit code stays 0 (65 with --strict, or when no input could be read). Every image gets an out-of-distribution score when the run has its
    statistics; beyond the run's threshold (or below --min-probability) the answer is unknown (exit code 0):
    see docs/calibration.md.
    """
    from vgg_cli.cli.common import setup_logging
    from vgg_cli.errors import UsageError
    from vgg_cli.inference.predict import NOT_FOUND, format_results
    from vgg_cli.inference.request import Request, open_request

    request = Request(**asked)
    if request.run is not None and request.model_file is not None:
        raise click.UsageError("give either --run or --model, not both")
    if request.cam_dir is None and (request.cam_class or request.cam_layer):
        raise click.UsageError("--cam-class and --cam-layer go with --gradcam DIR")
    setup_logging(verbose)
    try:
        opened = open_request(request, runs)
    except UsageError as e:
        raise click.UsageError(str(e)) from None
    if request.run is None and request.model_file is None:
        _warn_if_latest_has_other_classes(runs)
    with model_work(verbose, frameworks=opened.needs_keras):
        answered = opened.answer()
    click.echo(f"model: {opened.path}", err=True)  # which run answered (production moves under cron)
    click.echo(format_results(answered.results, fmt, request.top_k, answered.cams), nl=False)
    if answered.cams:
        click.echo(f"gradcam: {len(answered.cams)} overlay(s) and heatmap(s) in {request.cam_dir} "
                   f"(layer {next(iter(answered.cams.values()))['layer']})", err=True)
        blank = sum(1 for c in answered.cams.values() if not c["positive_evidence"])
        if blank:
            click.echo(f"gradcam: {blank} map(s) are empty: no region of the image raises its class's score (the "
                       f"answer rests on the other classes' evidence being absent; positive_evidence false in "
                       f"--format json; docs/reports.md, Grad-CAM)", err=True)
    if verbose:
        t, n = answered.timings, len(opened.files)
        click.echo(f"timings: import {t['import']:.2f}s, model load {t['load']:.2f}s ({opened.path}), predict "
                   f"{t['predict']:.2f}s for {n} file(s) ({n / t['predict']:.1f} img/s, decoding overlapped with "
                   f"inference)", err=True)
    return _unread_rule([r.path for r in answered.failed], len(answered.results), strict,
                        all(r.error == NOT_FOUND for r in answered.failed))


def _unread_rule(failed: list[str], total: int, strict: bool, all_missing: bool = False) -> int:
    """The rule of predict and evaluate for inputs that could not be read (docs/reports.md): each is named (its
    row, and here); the exit code is 0 while any input was answered, 65 when none was (66 when none exists) or
    when --strict asks that every input be read."""
    if not failed:
        return 0
    names = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
    if len(failed) == total:
        click.echo(f"error: none of the {total} input(s) could be read ({names})", err=True)
        return EXIT_NOINPUT if all_missing else EXIT_DATA
    if strict:
        click.echo(f"error: {len(failed)} of {total} input(s) could not be read ({names}); the others were "
                   f"answered (--strict: exit {EXIT_DATA})", err=True)
        return EXIT_DATA
    click.echo(f"warning: {len(failed)} of {total} input(s) could not be read ({names}); the others were answered "
               f"(exit 0; --strict makes it {EXIT_DATA})", err=True)
    return 0


def _warn_if_latest_has_other_classes(runs) -> None:
    """The default model is production's; when the newest run was kept out of production because its classes
    changed, say so (a user who just trained on new data expects the new run)."""
    latest, production = runs.latest(), runs.production()
    if latest is None or production is None or latest.root == production:
        return
    summary = latest.summary_or_none()
    change = ((summary.promotion if summary else None) or {}).get("class_change")
    if change:
        click.echo(f"note: answering with production {production.name}; the latest run {latest.name} has other "
                   f"classes (added {change.get('added') or 'none'}, removed {change.get('removed') or 'none'}) and "
                   f"was not promoted: pass --run {latest.name} to use it", err=True)


def _model_of(run: str | None, model_file: str | None, runs):
    """(model file, its run directory or None) from --run / --model, as evaluate and export take them: a run
    defaults to production, else latest."""
    from vgg_cli.runs.rundir import RunDir

    if run is not None and model_file is not None:
        raise click.UsageError("give either --run or --model, not both")
    if model_file is not None:
        from vgg_cli.inference.predict import resolve_model_file

        return resolve_model_file(None, model_file, runs), None
    run_dir = runs.resolve(run)
    return RunDir(run_dir).model_file(), run_dir


@click.command(short_help="Measure a trained model: accuracy, per-class report, confusion matrix.")
@click.argument("data_dir", required=False)
@run_option
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="A .keras model file instead of a run (then DATA_DIR is required).")
@runs_dir_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the report files. Default: <run>/evaluation/<val or DATA_DIR's name>.")
@click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--tta", type=click.Choice(["none", "flip", "shift", "flip+shift"]), default="none", show_default=True,
              help="Test-time augmentation: average over a mirrored and/or four shifted copies (see README).")
@click.option("--gradcam", is_flag=True, help="Gallery tiles show Grad-CAM overlays of the predicted class.")
@click.option("--cam-layer", help="Conv layer for --gradcam. Default: the backbone's last (block5_conv3 in VGG16).")
@click.option("--min-probability", type=click.FloatRange(0, 1), default=None,
              help="Count a top probability below this as unknown too (the accepted share and its accuracy).")
@click.option("--uncalibrated", is_flag=True, help="Raw probabilities (temperature 1) in the scores and galleries.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--strict", is_flag=True, help=f"Exit {EXIT_DATA} when any image cannot be read (default: 0; they are "
              "named on stderr and listed in report.json).")
def evaluate(run: str | None, model_file: str | None, runs, as_json: bool, strict: bool, **asked) -> int:
    """Evaluate a trained model on its run's validation split (default) or on DATA_DIR, a folder with one
    subfolder per class (matched to the model's classes by name; an unknown class folder is an error, a missing
    one is reported).

    \b
    Prints accuracy, top-5 accuracy (more than 5 classes), per-class precision/recall/F1/support and the
    confusion matrix, calibration (ECE, MCE, NLL, Brier before and after the run's temperature) and the share
    accepted by the run's out-of-distribution threshold; writes report.json, per_class.csv,
    confusion_matrix.csv/.png, confusion_matrix_normalised.png, misclassified.csv (with each file's top
    predictions), reliability.png and coverage.png.
    """
    from vgg_cli.errors import NoInputError
    from vgg_cli.evaluation.evaluate import format_report
    from vgg_cli.evaluation.request import EvalRequest, check_before_loading, evaluate_request

    request = EvalRequest(**asked)
    if model_file is not None and run is None and request.data_dir is None:
        raise click.UsageError("--model FILE needs DATA_DIR (only a run directory knows its validation split)")
    if request.cam_layer and not request.gradcam:
        raise click.UsageError("--cam-layer goes with --gradcam")
    path, run_dir = _model_of(run, model_file, runs)
    if request.data_dir is not None and not os.path.isdir(os.path.expanduser(request.data_dir)):
        raise NoInputError(f"DATA_DIR {request.data_dir!r} is not a folder; pass a folder with one subfolder per "
                           f"class")
    check_before_loading(request, path)
    with model_work():
        report = evaluate_request(request, path, run_dir, lambda text: click.echo(f"warning: {text}", err=True))
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report), nl=False)
    skipped = [s["path"] for s in report["skipped"]]
    return _unread_rule(skipped, len(skipped) + report["images"], strict)


@click.command(short_help="Export a trained model: SavedModel, TFLite or ONNX.")
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite", "onnx"]), default=None,
              help="(required) saved_model: TF Serving; tflite: LiteRT on devices; onnx: onnxruntime and friends.")
@run_option
@click.option("--model", "model_file", type=click.Path(dir_okay=False), help="A .keras model file instead of a run.")
@runs_dir_option
@click.option("--out", "out_path", type=click.Path(),
              help="Where to write it. Default: <run>/export/saved_model, model.tflite or model.onnx.")
@click.option("--int8", is_flag=True, help="INT8 (tflite, onnx): calibrated on the run's training images, "
              "checked on its validation split. Default file: model.int8.tflite / model.int8.onnx.")
@click.option("--max-accuracy-drop", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="--int8: refuse (exit 3, nothing written) when the validation accuracy drops by more.")
@click.option("--calibration-images", default=100, show_default=True, type=click.IntRange(min=1),
              help="--int8: how many of the run's training images calibrate the quantization.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def export(fmt: str, run: str | None, model_file: str | None, runs, out_path: str | None, int8: bool,
           max_accuracy_drop: float, calibration_images: int, as_json: bool) -> int:
    """Export a trained model for serving, then load the export in its own runtime (tf.saved_model.load, the
    TFLite interpreter, onnxruntime) and check that it gives the Keras model's probabilities (max difference
    1e-4) before it replaces anything.

    \b
    Every format takes float32 [N, S, S, 3] raw RGB pixels 0-255 (S = the run's data.image_size, made square
    as its data.resize says; VGG preprocessing is inside) and returns class probabilities. Class names travel with it: the SavedModel
    signature also returns class_index and class_name, and has assets.extra/labels.txt; TFLite and ONNX get
    <name>.labels.txt beside the file (ONNX also in its metadata, class_names).

    \b
    --int8 (tflite, onnx): a quarter of the size. It is checked on the run's validation split instead: written
    only when its accuracy is at most --max-accuracy-drop below the float model's (exit 3 otherwise).
    """
    if fmt is None:
        from vgg_cli.errors import UsageError

        raise UsageError("vgg export needs --format saved_model, tflite or onnx (e.g. vgg export --format onnx)")
    from pathlib import Path

    from vgg_cli.export.formats import DEFAULT_NAMES
    path, run_dir = _model_of(run, model_file, runs)
    default_root = (run_dir or path.parent) / "export"
    name = DEFAULT_NAMES[fmt].replace(".", ".int8.") if int8 else DEFAULT_NAMES[fmt]
    out = Path(os.path.expanduser(out_path)) if out_path else default_root / name
    with model_work():
        from vgg_cli.export.formats import export_model
        from vgg_cli.export.quantize import AccuracyDropError, export_int8
        from vgg_cli.inference.ood import stats_for
        from vgg_cli.model.load import load_model

        model = load_model(path)
        try:
            report, refused = (export_int8(model, fmt, out, run_dir, max_accuracy_drop, calibration_images) if int8
                               else export_model(model, fmt, out, stats_for(model, path))), None
        except AccuracyDropError as e:
            report, refused = None, e
    if refused is not None:
        if as_json:  # --json answers on a refusal too (stdout is the command's again here)
            echo_json({**refused.report, "path": None, "exit_code": refused.exit_code, "error": str(refused)})
        raise refused
    if as_json:
        echo_json(report)
    elif int8:
        click.echo(report["path"])
        click.echo(_int8_line(report), err=True)
    else:
        click.echo(report["path"])
        click.echo(f"{fmt}: {report['bytes'] / 2**20:.1f} MiB; input {report['input']['description']}; labels in "
                   f"{report['labels']}; checked in {report['runtime']}: max |difference| from Keras "
                   f"{report['max_abs_diff']:.2g} on {report['probe_images']} probe images", err=True)
    return 0


def _int8_line(r: dict) -> str:
    return (f"{r['format']} int8: {r['bytes_int8'] / 2**20:.1f} MiB (float {r['bytes_float'] / 2**20:.1f} MiB), "
            f"{r['latency_ms_int8']:.1f} ms per image on this CPU (float {r['latency_ms_float']:.1f} ms); validation "
            f"accuracy {r['accuracy_int8']:.4f} vs float {r['accuracy_float']:.4f} on {r['validation_images']} "
            f"images (drop {r['accuracy_drop']:.4f}, allowed {r['max_accuracy_drop']:g}); same top-1 on "
            f"{r['top1_agreement']:.1%}; calibrated on {r['calibration_images']} training images; labels in "
            f"{r['labels']}")


@click.command(short_help="Show the model's layers, parameters and frozen blocks.")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--original", type=click.Choice(["vgg16", "vgg19"]),
              help="Show the paper's full network with its 1000-way ImageNet top instead.")
def summary(config_path: str | None, overrides: tuple[str, ...], original: str | None) -> int:
    """Print the model's layers, output shapes, parameter counts and trainable flags (no weights loaded)."""
    from vgg_cli.config.schema import head_norm_of, load_config

    cfg = load_config(config_path, overrides)
    load_frameworks()
    from vgg_cli.model import build as m

    if original:
        m.original_vgg(original).summary(print_fn=lambda s, **_: click.echo(s))
        return 0
    classes, note = _summary_classes(cfg)
    model, _ = m.build_model(cfg.model, cfg.data.image_size, classes, load_weights=False, augment=cfg.augment,
                             resize=cfg.data.resize, norm=head_norm_of(cfg))
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


