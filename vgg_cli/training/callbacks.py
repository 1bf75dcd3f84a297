"""Keras callbacks and log handlers of a training run: stopping on signals, the progress bar, TensorBoard scalars,
and the run's log file (``train.log``). Checkpointing is ``vgg_cli.training.checkpoints``, health ``vgg_cli.training.health``."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import keras
from tqdm import tqdm

from vgg_cli.errors import ArtifactIOError
from vgg_cli.progress import plain_every_s

log = logging.getLogger("vgg")


class Stop(Exception):
    """Raised at a batch boundary after SIGINT/SIGTERM."""


class StopOnSignal(keras.callbacks.Callback):
    """SIGINT/SIGTERM ask training to stop at the next batch boundary (a second one stops at once)."""

    def __init__(self):
        super().__init__()
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self._previous_hook
        return False

    def _unraisable(self, unraisable) -> None:
        """A second signal's KeyboardInterrupt that landed in code whose exceptions Python ignores (a garbage
        collector callback: JAX registers one, and Keras imports JAX when it is installed) is not printed as a
        traceback: the first signal already stops the run at the next batch boundary. Anything else is reported
        as usual."""
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and self.signal_name is not None:
            log.debug("a second %s arrived inside %r; stopping at the next batch boundary", self.signal_name,
                      unraisable.object)
            return
        self._previous_hook(unraisable)

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: stopping after the current batch (send it again to stop at once)",
                    self.signal_name)

    def check(self, *_, **__):
        if self.signal_name is not None:
            raise Stop(self.signal_name)

    on_train_batch_end = on_test_batch_end = on_epoch_begin = check


class ProgressBar(keras.callbacks.Callback):
    """Progress inside an epoch. On a terminal a tqdm bar (images/s, loss, accuracy); off one (cron, a log file,
    systemd) a plain line at least every ``progress.plain_every_s()`` seconds, in stderr and train.log, with the
    batch count, the rate and the time left in the epoch, also while the epoch validates."""

    def __init__(self, epochs: int, steps: int, batch_size: int, tty: bool | None = None, clock=time.perf_counter,
                 val_steps: int = 0):
        super().__init__()
        self.epochs, self.steps, self.batch_size, self.val_steps = epochs, steps, batch_size, val_steps
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock, self.bar, self.epoch = clock, None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self._t0 = epoch, self.clock()
        self._shown = self._t0 if not self.tty else 0.0
        if self.tty:
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if self.bar is not None:
            self.bar.update(1)
        if now - self._shown < (0.5 if self.tty else plain_every_s()) and batch + 1 < self.steps:
            return  # reading the loss waits for the device: not every step
        if not self.tty and batch + 1 >= self.steps:
            return  # the epoch's own line follows
        self._shown = now
        elapsed = now - self._t0
        rate = (batch + 1) * self.batch_size / elapsed if elapsed > 0 else 0.0
        post = {k: f"{float(v):.4f}" for k, v in (logs or {}).items() if k in ("loss", "accuracy")}
        if self.bar is not None:
            self.bar.set_postfix({"img/s": f"{rate:.1f}", **post}, refresh=False)
            return
        left = (self.steps - batch - 1) * elapsed / (batch + 1)
        log.info("epoch %d/%d: batch %d/%d, %.1f img/s, %sabout %.0fs left in the epoch", self.epoch + 1,
                 self.epochs, batch + 1, self.steps, rate, "".join(f"{k} {v}  " for k, v in post.items()), left)

    def on_test_begin(self, logs=None):
        self._v0 = self.clock()

    def on_test_batch_end(self, batch, logs=None):
        now = self.clock()
        if self.tty or now - self._shown < plain_every_s() or not self.val_steps or batch + 1 >= self.val_steps:
            return
        self._shown = now
        log.info("epoch %d/%d: validating, batch %d/%d", self.epoch + 1, self.epochs, batch + 1, self.val_steps)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochScalars(keras.callbacks.Callback):
    """TensorBoard scalars per epoch (``train/`` and ``validation/``, as Keras' TensorBoard callback lays them out).
    Keras' callback also hooks every training step and took ~20 s to close its writers at the end of a VGG run
    with trainable conv blocks; per-epoch scalars are all a run needs."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    @staticmethod
    def available() -> bool:
        """TensorBoard's event files are written with tf.summary: on the JAX and PyTorch backends only when
        TensorFlow is installed too."""
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            return False
        return True

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.scalar(f"epoch_{name}", float(value), step=epoch)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers.clear()


class EarlyLog(logging.Handler):
    """Keeps the records logged before the run directory exists, so train.log tells the whole story."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunLog(logging.FileHandler):
    """<run>/train.log. A line that cannot be written (a full disk) is reported once on the console instead of
    logging's traceback for every line; the run's next artifact write then ends it with exit 74."""

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._warned:
            self._warned = True
            why = sys.exc_info()[1]
            sys.stderr.write(f"warning: cannot write {self.baseFilename} ({why}); logging to the console only\n")


def attach_log_file(path: Path, early: EarlyLog | None) -> logging.Handler:
    try:
        handler = RunLog(path, encoding="utf-8")  # appends: a resumed run continues the same log
    except OSError as e:
        raise ArtifactIOError(f"could not write {str(path)!r}: {e.strerror}; free space or fix permissions and "
                              f"run again") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if early is not None:
        log.removeHandler(early)
        for record in early.records:
            handler.handle(record)
    log.addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Stop logging to a run's train.log. Closing flushes: on a full disk that fails, and must not mask the error
    that is already on its way (the one-line 74 of the write that failed first)."""
    log.removeHandler(handler)
    try:
        handler.close()
    except OSError:
        pass
