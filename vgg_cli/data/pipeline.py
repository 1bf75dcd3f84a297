"""Batches for training and evaluation, from a *source* of per-image arrays.

A source holds one array per image of a fixed list (training images first, then validation images) and returns
batches of them by index:

- ``ImageSource``: decoded, resized uint8 images (``load_image``, the function prediction uses too), decoded in
  parallel threads (Pillow releases the GIL), with an optional RAM cache so that later epochs skip decoding;
- ``vgg_cli.data.features.FeatureSource``: activations of the frozen prefix of the network, computed once.

On the TensorFlow backend ``tf.data`` only schedules: it turns per-epoch index orders into batches, calls the source
from a few threads in parallel and prefetches, so the next batches are ready while the accelerator computes. On the
JAX and PyTorch backends (where TensorFlow need not be installed at all) a Python generator does the same: a
background thread makes the next batches while the current one trains (``BackgroundBatches``). Both yield the same
batches in the same order. Under a JAX distribution (``vgg_cli.platform.distribute``) each batch is padded to a multiple of
the devices with weight-0 copies and each process yields its slice of it. This is the one module that uses
TensorFlow directly; model, training and prediction code use Keras APIs only.

Class weights travel as per-image sample weights (``weights[label]``, what Keras' ``class_weight`` does), since
Keras accepts ``class_weight`` for tf.data but not for Python generators.

Training order is a pure function of (seed, epoch): epoch ``e`` visits the training images in
``numpy.random.default_rng([seed, e]).permutation(n)``. A run resumed at epoch ``k`` therefore sees exactly the
batches an uninterrupted run would have seen from epoch ``k`` on, whichever source feeds it.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import types
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

from vgg_cli.data.images import BadImage, check_resize, load_image
from vgg_cli.errors import DataError, NoInputError, VggError
from vgg_cli.platform.device import release_free_memory
from vgg_cli.platform.distribute import Split, data_split, in_distribution_scope, pad_batch


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def decode_workers() -> int:
    return max(2, min(16, os.cpu_count() or 2))


def _changed_since_scan(path: str, e: BadImage) -> VggError:
    """An image the scan accepted that cannot be read now, during the run: the run stops (its finished epochs are
    on disk) rather than train on fewer images than its data.json lists."""
    then = ("the epochs finished so far are saved: put it back and continue with `vgg train --resume`, or start a "
            "new run (`vgg train`), whose scan leaves it out")
    if not os.path.lexists(path):
        return NoInputError(f"image {path!r} was removed during the run (after the dataset scan, which listed it "
                            f"in the run's data.json); {then}")
    return DataError(f"image {path!r} can no longer be read ({e}): it changed during the run, after the dataset "
                     f"scan; {then.replace('put it back', 'restore it')}")


# How often (seconds, at most) making a training batch hands freed heap memory back to the OS.
BATCH_TRIM_INTERVAL_S = 2.0


def batch_buffer(shape: tuple, dtype) -> np.ndarray:
    """An empty array for one batch, in its own anonymous memory map when it is large: unmapped (returned to
    the OS) as soon as the last reference goes. From malloc, per-batch buffers allocated on tf.data's threads
    stayed in glibc's per-thread heaps and peak memory grew with the number of images processed.

    Making a batch also trims the C heap at most every ``BATCH_TRIM_INTERVAL_S``: the training step's own tensors
    (activations, gradients: 4-16 MiB each for blocks 4-5 at 128 px) come from glibc's heaps, which kept ~300 MiB
    of freed memory and grew over an epoch's steps, so a longer epoch (a bigger dataset) had a higher peak.
    Measured (bench case b, 2 epochs, 200 vs 800 images): peak 1164 vs 1253 MiB trimmed once per epoch, 1050 vs
    1067 MiB trimmed every 2 s, at the same epoch times within the run-to-run noise."""
    release_free_memory(BATCH_TRIM_INTERVAL_S)
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    if n < 1 << 20:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, n), dtype).reshape(shape)


def load_or_fail(path: str, size: int, resize: str = "squash") -> np.ndarray:
    """``load_image`` for a file the scan accepted: a failure now is a DataError."""
    try:
        return load_image(path, size, resize)
    except BadImage as e:
        raise _changed_since_scan(path, e) from None


def prefetch_batches(items: Sequence, load: Callable, batch_size: int, pool: Executor) -> Iterator[tuple[int, list]]:
    """Yield ``(start, [load(item) ...])`` per batch of ``items``, loading the next batch in ``pool`` while the
    caller works on this one (decoding overlaps inference)."""
    pending = None
    for start in range(0, len(items), batch_size):
        futures = pending if pending is not None else [pool.submit(load, x) for x in items[start:start + batch_size]]
        nxt = start + batch_size
        pending = [pool.submit(load, x) for x in items[nxt:nxt + batch_size]] if nxt < len(items) else None
        yield start, [f.result() for f in futures]
        release_free_memory()  # else freed batch memory piles up in the allocator: memory grew with the file count


class ImageSource:
    """uint8 images (size, size, 3) of ``paths``, made square as ``resize`` says (``images.RESIZE_MODES``); the first
    ``ram_bytes`` worth are kept in RAM once decoded (per source, so per run: no key to share)."""

    def __init__(self, paths: Sequence[str], size: int, ram_bytes: int = 0, workers: int | None = None,
                 resize: str = "squash"):
        self.paths = list(paths)
        self.shape = (size, size, 3)
        self.dtype = np.dtype(np.uint8)
        self.size = size
        self.resize = check_resize(resize)
        item = int(np.prod(self.shape))
        self.ram_items = min(len(self.paths), max(0, ram_bytes) // item)
        self._ram = np.empty((self.ram_items, *self.shape), np.uint8)
        self._filled = np.zeros(self.ram_items, bool)
        self._pool = ThreadPoolExecutor(max_workers=workers or decode_workers(), thread_name_prefix="vgg-decode")
        self.decoded = 0  # images decoded (a cache hit does not count)
        self.failure: VggError | None = None  # the user error that stopped a batch (see raise_source_failure)
        self._lock = threading.Lock()

    def describe(self) -> str:
        if self.ram_items == 0:
            return "images decoded every epoch (no RAM image cache)"
        part = "all" if self.ram_items == len(self.paths) else f"{self.ram_items} of {len(self.paths)}"
        return f"decoded images cached in RAM ({part}, {self.ram_items * np.prod(self.shape) / 2**20:.1f} MiB)"

    def _load(self, i: int) -> np.ndarray:
        if i < self.ram_items and self._filled[i]:
            return self._ram[i]
        arr = load_or_fail(self.paths[i], self.size, self.resize)
        with self._lock:
            self.decoded += 1
        if i < self.ram_items:
            self._ram[i] = arr
            self._filled[i] = True
        return arr

    def get(self, idx: np.ndarray) -> np.ndarray:
        out = batch_buffer((len(idx), *self.shape), self.dtype)
        try:
            for j, arr in enumerate(self._pool.map(self._load, (int(i) for i in idx))):
                out[j] = arr
        except VggError as e:
            self.failure = self.failure or e
            raise
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def raise_source_failure(source) -> None:
    """Raise the user error (an image removed during the run) that stopped one of ``source``'s batches, if one did.
    On TensorFlow batches are made inside tf.data, which turns any exception into a framework error (a traceback
    in its text, no exit code): call this in an ``except`` around ``fit`` so the run ends with that error's one
    line and exit code instead. On the other backends the error itself reaches ``fit``'s caller."""
    failure = getattr(source, "failure", None)
    if failure is not None:
        raise failure from None


def uses_tf_data() -> bool:
    """tf.data on the TensorFlow backend (what the benchmarks were tuned on, and what tf.distribute shards);
    Python generators elsewhere."""
    import keras

    return keras.backend.backend() == "tensorflow"


def _batches_of(source, index_ds, labels: np.ndarray, sample_weights: np.ndarray | None):
    import tensorflow as tf

    labels_t = tf.constant(labels.astype(np.int32))
    weights_t = None if sample_weights is None else tf.constant(sample_weights.astype(np.float32))
    tf_dtype = tf.as_dtype(source.dtype)

    def _get(idx):
        x = tf.numpy_function(source.get, [idx], tf_dtype, stateful=False)
        x.set_shape((None, *source.shape))
        if weights_t is None:
            return x, tf.gather(labels_t, idx)
        return x, tf.gather(labels_t, idx), tf.gather(weights_t, idx)

    # Two batches in flight (each source call is itself parallel inside) and two ready: the next batch is always
    # waiting. Fixed sizes, and tf.data's autotuning off: its optimisation thread sleeps for periods that double up
    # to 60 s, and destroying the iterator (when fit returns) waited for that sleep to end -- up to a minute of
    # idle time at the end of every long enough run.
    options = tf.data.Options()
    options.autotune.enabled = False
    return index_ds.map(_get, num_parallel_calls=2, deterministic=True).prefetch(2).with_options(options)


def _distributed(make_index_ds, source, labels: np.ndarray, sample_weights: np.ndarray | None, repeat: bool):
    """Inside a tf.distribute strategy's scope: each global batch (an index array from ``make_index_ds()``) is
    split into one slice per replica (replica r of T takes items r, r+T, ...), each worker making only its own
    replicas' slices (``distribute_datasets_from_function``): every worker walks the same global batches, so all
    take the same number of steps, and no image is loaded twice. ``repeat``: for validation data, which Keras
    iterates again every epoch from one iterator."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    total = strategy.num_replicas_in_sync

    def dataset_fn(ctx: tf.distribute.InputContext):
        local = total // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local
        replicas = tf.data.Dataset.range(first, first + local)
        ds = make_index_ds().flat_map(lambda idx: replicas.map(lambda r: idx[r::total]))
        return _batches_of(source, ds.repeat() if repeat else ds, labels, sample_weights)

    return strategy.distribute_datasets_from_function(dataset_fn)


_END = object()


class BackgroundBatches:
    """Iterator over ``(x, y[, w])`` batches for the index arrays of ``index_iter``, made ``ahead`` batches in
    advance by a background thread (the tf.data pipeline's prefetch, for backends without TensorFlow). An error in
    the thread is raised in the consumer. ``close()`` stops the thread; it is a daemon, so a consumer that stops
    early never blocks the process's exit."""

    def __init__(self, source, index_iter: Iterator[np.ndarray], labels: np.ndarray,
                 sample_weights: np.ndarray | None = None, ahead: int = 2, split: Split | None = None):
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._split = split
        self._thread = threading.Thread(target=self._produce, args=(source, index_iter, labels, sample_weights),
                                        name="vgg-batches", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source, index_iter, labels, sample_weights) -> None:
        try:
            for idx in index_iter:
                if self._split is not None:  # a JAX distribution: padded global batch, this process's slice
                    idx, w = pad_batch(idx, None if sample_weights is None else sample_weights[idx], self._split)
                    batch = (source.get(idx), labels[idx], w)
                elif sample_weights is None:
                    batch = (source.get(idx), labels[idx])
                else:
                    batch = (source.get(idx), labels[idx], sample_weights[idx])
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stays exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def _generator(batches: BackgroundBatches):
    """Keras takes Python generators (not iterators) on every backend; closing the generator stops the thread."""
    try:
        yield from batches
    finally:
        batches.close()


def _item_weights(labels: np.ndarray, class_weight: dict[int, float] | None) -> np.ndarray | None:
    if class_weight is None:
        return None
    table = np.ones(int(labels.max()) + 1 if len(labels) else 1, np.float32)
    for label, w in class_weight.items():
        if label < len(table):
            table[label] = w
    return table[labels]


def eval_batches(source, ids: Sequence[int], labels: np.ndarray, batch_size: int, repeat: bool = False):
    """Batches of source items ``ids`` in that order: (arrays [B, ...], int32 labels [B]). ``labels`` is indexed by
    source item. ``repeat``: without end, the same batches again and again (what Keras' fit needs of a generator,
    or a distributed dataset, used as validation data every epoch, with ``validation_steps=ceil(len(ids) /
    batch_size)``); a plain tf.data dataset is re-iterated by Keras and ignores it."""
    if len(ids) == 0:
        raise ValueError("eval_batches needs at least one item")
    ids_np = np.asarray(ids, np.int64)
    if uses_tf_data():
        import tensorflow as tf

        def _index_ds():
            return tf.data.Dataset.from_tensor_slices(ids_np).batch(batch_size)

        if in_distribution_scope():
            return _distributed(_index_ds, source, labels, None, repeat)
        return _batches_of(source, _index_ds(), labels, None)

    def _indices():
        while True:
            for start in range(0, len(ids_np), batch_size):
                yield ids_np[start:start + batch_size]
            if not repeat:
                return

    return _generator(BackgroundBatches(source, _indices(), labels, split=data_split()))


def batch_bounds(n: int, batch_size: int) -> np.ndarray:
    """Start offsets (and n at the end) of ``ceil(n / batch_size)`` batches whose sizes differ by at most one.

    Not ``batch_size`` images per batch and a remainder: 161 images in batches of 32 would end every epoch with a
    batch of one image, and Adam gives that one image a full-size step (measured: it cost the head in bench case (a)
    about a third of its validation accuracy). Every image is still used once per epoch."""
    k = -(-n // batch_size)
    sizes = np.full(k, n // k, np.int64)
    sizes[: n % k] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def train_batches(source, ids: Sequence[int], labels: np.ndarray, batch_size: int, seed: int, first_epoch: int,
                  epochs: int, class_weight: dict[int, float] | None = None):
    """Training batches for epochs ``first_epoch .. epochs-1``, each epoch visiting ``ids`` in ``epoch_order`` in
    ``ceil(len(ids) / batch_size)`` batches of near-equal size (``batch_bounds``; a batch never spans two epochs).
    Use with ``steps_per_epoch=ceil(len(ids) / batch_size)``. With ``class_weight`` ({label: weight}) each batch
    also carries per-image sample weights."""
    if len(ids) == 0:
        raise ValueError("train_batches needs at least one item")
    ids_np = np.asarray(ids, np.int64)
    n = len(ids_np)
    bounds_np = batch_bounds(n, batch_size)
    k = len(bounds_np) - 1
    weights = _item_weights(labels, class_weight)

    def _order(epoch) -> np.ndarray:
        return ids_np[epoch_order(n, seed, int(epoch))]

    if not uses_tf_data():
        def _indices():
            for epoch in range(first_epoch, epochs):  # lazily, one epoch at a time
                order = _order(epoch)
                for i in range(k):
                    yield order[bounds_np[i]:bounds_np[i + 1]]

        return _generator(BackgroundBatches(source, _indices(), labels, weights, split=data_split()))

    import tensorflow as tf

    bounds = tf.constant(bounds_np)

    def _epoch(epoch):
        order = tf.numpy_function(_order, [epoch], tf.int64, stateful=False)
        order.set_shape((n,))
        return tf.data.Dataset.range(k).map(lambda i: order[bounds[i]:bounds[i + 1]])

    def _index_ds():
        return tf.data.Dataset.range(first_epoch, epochs).flat_map(_epoch)  # lazily, one epoch at a time

    if in_distribution_scope():
        return _distributed(_index_ds, source, labels, weights, repeat=False)
    return _batches_of(source, _index_ds(), labels, weights)


def close_batches(batches) -> None:
    """Stop the background thread of a generator from this module (a no-op for tf.data datasets)."""

    if isinstance(batches, types.GeneratorType):
        batches.close()
