"""The ``vgg`` command line. Commands are thin: parse, call one function, print.

TensorFlow/Keras are imported only inside the commands that need them, so ``vgg --help`` and
``vgg config show`` are instant.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import click

from vgg_cli import __version__
from vgg_cli.cli.common import silence_stdout
from vgg_cli.cli.models import evaluate, export, predict, summary
from vgg_cli.cli.runs import check, config_group, promote, rollback, runs_command
from vgg_cli.cli.train import lr_find, train
from vgg_cli.errors import EXIT_INTERNAL, EXIT_IOERR, EXIT_TEMPFAIL, EXIT_USAGE, Terminated, VggError


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


for _command in (train, predict, evaluate, export, lr_find, summary, check, runs_command, promote, rollback,
                 config_group):
    cli.add_command(_command)


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console entry point, and vgg's one top-level handler: user errors become one line and a documented exit
    code; SIGTERM is SIGINT (75); output that cannot be written is 74 (1 only when the reader went away); anything
    else is a bug: its traceback and 70."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        sys.exit(_run(argv))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run(argv: list[str] | None) -> int:
    try:
        return _dispatch(argv)
    except (SystemExit, VggError, click.ClickException, click.Abort, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # the reader of our output went away (`vgg predict DIR | head`): no traceback
        silence_stdout()
        return 1
    except OSError as e:  # disk and I/O: one line, 74 (a file of ours, or stdout/stderr themselves)
        return _io_failure(e)
    except Exception:  # noqa: BLE001 (a bug: keep its traceback)
        return _bug()


def _io_failure(e: OSError) -> int:
    why = os.strerror(e.errno) if e.errno else str(e)
    if not _cwd_exists():
        _say(f"error: the current folder was deleted while vgg ran ({why}); cd to an existing folder (or give "
             f"absolute paths) and run the command again")
    elif getattr(e, "filename", None) is None:  # writing stdout/stderr (a full disk behind `> file`, /dev/full)
        _say(f"error: could not write the output: {why}; the work itself is done and on disk (redirect the "
             f"output elsewhere)")
        silence_stdout()
    else:
        _say(f"error: could not use {str(e.filename)[:300]!r}: {why}; fix it and run the command again")
    return EXIT_IOERR


def _say(line: str) -> None:
    try:
        click.echo(line, err=True)
    except OSError:  # stderr is gone too: the exit code still says it
        pass


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except OSError:
        return False
    return True


def _bug() -> int:
    traceback.print_exc()
    click.echo(f"error: this is a bug in vgg (exit {EXIT_INTERNAL}); the traceback above says where", err=True)
    return EXIT_INTERNAL


def _dispatch(argv: list[str] | None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="vgg", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help())
        return 0
    except click.UsageError as e:
        where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else "; see 'vgg --help'"
        hint = _option_hint(e, argv if argv is not None else sys.argv[1:])
        click.echo(f"error: {e.format_message().rstrip('.')}{hint}{where}", err=True)
        return EXIT_USAGE
    except click.Abort as e:  # Click turns Ctrl-C outside our own handling into Abort
        return _interrupted(e.__context__) if isinstance(e.__context__, KeyboardInterrupt) else _aborted()
    except VggError as e:
        click.echo(f"error: {_capped(str(e))}", err=True)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    return rv if isinstance(rv, int) else 0


def _option_hint(e: click.UsageError, argv: list[str]) -> str:
    """" (settings are KEY=VALUE: write train.epochs=3)" for `--epochs 3`, an option that is a config key's (or
    another tool's) name; else ""."""
    if not isinstance(e, click.NoSuchOption) or not e.option_name.startswith("--") or e.ctx is None:
        return ""
    if not any(p.name == "overrides" for p in e.ctx.command.params):  # only the commands that take KEY=VALUE
        return ""
    from vgg_cli.config.habits import HABITS  # deferred: only on this error
    from vgg_cli.config.sources import leaf_keys

    name, _, given = e.option_name[2:].partition("=")
    name = name.replace("-", "_")
    keys = [HABITS[name][0]] if name in HABITS else [k for k in leaf_keys() if k.split(".")[-1] == name]
    if len(keys) != 1:
        return ""
    glued = [a.partition("=")[2] for a in argv if a.startswith(e.option_name + "=")]
    if glued:
        given = glued[0]
    elif e.option_name in argv:
        after = argv[argv.index(e.option_name) + 1:]
        given = after[0] if after and not after[0].startswith("-") else ""
    return f" (settings are KEY=VALUE: write {keys[0]}={given or 'VALUE'})"


def _aborted() -> int:
    click.echo("error: aborted", err=True)
    return EXIT_TEMPFAIL


def _interrupted(e: BaseException) -> int:
    """Ctrl-C or SIGTERM outside training's own handling (training says how to resume, as a VggError)."""
    what = "SIGTERM" if isinstance(e, Terminated) else "SIGINT (Ctrl-C)"  # (errors.signal_name, spelled out)
    click.echo(f"error: stopped by {what} before the command finished; nothing half-written was kept (every file "
               f"is written whole or not at all): run the same command again (a training run continues with "
               f"vgg train --resume)", err=True)
    return EXIT_TEMPFAIL


def _capped(text: str, limit: int = 2000) -> str:
    """An error line stays a line: a value quoted inside is never allowed to make it huge."""
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else text[: limit - 40] + f"... ({len(text) - limit + 40} more characters)"
