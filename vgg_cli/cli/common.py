"""What every vgg command shares: loading Keras quietly on the right backend, console logging, printing results
(a closed pipe is not an error), and the options several commands take."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from typing import Iterator

import click

from vgg_cli.platform.backend import load_frameworks


class _ConsoleHandler(logging.StreamHandler):
    """stderr logging that goes quiet when the reader has gone (`vgg train ... 2>&1 | head -2`): the run goes on and
    its exit code stands, instead of a '--- Logging error ---' report per line."""

    def handleError(self, record):
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            return
        super().handleError(record)

    def filter(self, record):  # a record logged with extra={"console": False} is for train.log only
        return getattr(record, "console", True) and super().filter(record)


def emit(text: str, err: bool = False) -> None:
    """Print a command's result; a closed pipe is not an error of the command (its work is done and on disk)."""
    try:
        click.echo(text, err=err)
        (sys.stderr if err else sys.stdout).flush()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's exit-time flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (in-process tests)
        pass
    finally:
        os.close(devnull)


def setup_logging(verbose: bool) -> None:
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


@contextlib.contextmanager
def model_work(verbose: bool = False, backend: str = "auto", frameworks: bool = True) -> Iterator[None]:
    """The preamble of every command that runs a model, in one place: console logging, Keras imported quietly on
    its backend (unless ``frameworks`` is False: ``vgg predict``'s NumPy engine), and stdout kept for the command's
    result (whatever a library prints inside goes to stderr). The command prints its result after the block."""
    setup_logging(verbose)
    if frameworks:
        load_frameworks(backend)
    with contextlib.redirect_stdout(sys.stderr):
        yield


def dataset_argument(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """`vgg train DIR ...` (the yolo/fastai habit): a first argument that is not KEY=VALUE is data.train_dir, so a
    mistyped folder is "does not exist" (66), not a lesson on KEY=VALUE; only a bare config key (``train.epochs``,
    ``epochs``) keeps that lesson. The path is passed as it is: spaces, line breaks and YAML's special characters
    included."""
    if not overrides or "=" in overrides[0]:
        return overrides
    from vgg_cli.config.habits import HABITS  # deferred: the config's defaults only when a command runs
    from vgg_cli.config.sources import default_dict
    from vgg_cli.config.yamltext import yaml_load

    first = overrides[0]
    if not os.path.isdir(os.path.expanduser(first)) and (first in HABITS or first.split(".")[0] in default_dict()):
        return overrides
    try:
        plain = yaml_load(first) == first and "\n" not in first and "\r" not in first
    except Exception:  # noqa: BLE001 - any text YAML does not give back as it is gets quoted
        plain = False
    value = first if plain else json.dumps(first)
    return (f"data.train_dir={value}", *overrides[1:])


def echo_json(obj: dict) -> None:
    emit(json.dumps(obj, ensure_ascii=False, default=str))


config_option = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
                             help="YAML file merged over the defaults (configs/default.yaml).")


def runs_dir_option(command):
    """``--runs-dir DIR`` and ``--config FILE`` for a command that reads or changes the runs folder: the command gets
    ``runs`` (a ``vgg_cli.runs.root.RunsRoot``): --runs-dir, else the config's output.dir (default: runs)."""
    @functools.wraps(command)
    def with_runs(*args, runs_dir: str | None, runs_config: str | None, **kwargs):
        return command(*args, runs=runs_root(runs_dir, runs_config), **kwargs)

    with_runs = click.option("--config", "-c", "runs_config", type=click.Path(dir_okay=False),
                             help="A config file: its output.dir is the runs folder (unless --runs-dir).")(with_runs)
    return click.option("--runs-dir", default=None,
                        help="Where runs live. Default: --config's output.dir, else runs.")(with_runs)


def runs_root(runs_dir: str | None, config_path: str | None = None):
    """The runs folder: ``runs_dir``, else ``output.dir`` of the config file (or of the defaults)."""
    from vgg_cli.runs.root import RunsRoot

    if runs_dir is not None:
        return RunsRoot(runs_dir)
    if config_path is None:
        from vgg_cli.config.sources import default_dict

        return RunsRoot(default_dict()["output"]["dir"])
    from vgg_cli.config.schema import load_config

    return RunsRoot.of(load_config(config_path))


run_option = click.option("--run", "run",
                          help="Run directory (or its name in --runs-dir). Default: production, else latest.")
