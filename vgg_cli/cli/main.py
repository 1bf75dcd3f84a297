"""The ``vgg`` command line. Commands are thin: parse, call one function, print.

TensorFlow/Keras are imported only inside the commands that need them, so ``vgg --help`` and
``vgg config show`` are instant.
"""

from __future__ import annotations

import sys

import click

from vgg_cli import __version__
from vgg_cli.cli.common import silence_stdout
from vgg_cli.cli.models import evaluate, export, predict, summary
from vgg_cli.cli.runs import check, config_group, promote, rollback, runs_command
from vgg_cli.cli.train import lr_find, train
from vgg_cli.errors import EXIT_TEMPFAIL, EXIT_USAGE, VggError


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
        silence_stdout()
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
