"""The fast paths: cached frozen-prefix features, the RAM image cache, and what they must not change."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIZE, colour_image, make_colour_dataset, run_cli

FAST = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[16]", "model.head.dropout=0.3",
        "train.epochs=3", "train.batch_size=8", "train.early_stopping_patience=0", "output.tensorboard=false",
        "output.report=false"]  # no test here reads a run's report.html or evaluation/


def _train(data: Path, runs: Path, name: str, *extra: str) -> dict:
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", f"output.name={name}",
                              *FAST, *extra])
    assert code in (0, 3), err  # 3: trained, not promoted (these tests compare runs, not their accuracy)
    return json.loads((runs / name / "summary.json").read_text())


def _metrics(run: Path) -> np.ndarray:
    lines = (run / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    keep = [i for i, h in enumerate(head) if h in ("loss", "accuracy", "val_loss", "val_accuracy")]
    return np.array([[float(line.split(",")[i]) for i in keep] for line in lines[1:]])


def _weights(run: Path) -> dict[str, np.ndarray]:
    import keras

    model = keras.saving.load_model(run / "model" / "best.keras", compile=False)
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    out = {w.path: np.asarray(w) for w in model.weights if "vgg16" not in w.path}
    out.update({f"backbone/{w.path}": np.asarray(w) for w in backbone.weights})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("cache") / "train", per_class=10, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("freeze", ["[1,2,3,4,5]", "[1,2,3]"])
def test_cached_features_train_exactly_like_the_whole_network(tmp_path, data, freeze):
    """Same seed and data: the run on cached prefix activations and the run through the whole network agree
    (metrics every epoch and every saved weight) to float tolerance; blocks in the prefix never change."""
    args = (f"model.freeze_blocks={freeze}", "train.optimizer.learning_rate=0.0003")
    cached = _train(data, tmp_path / "runs", "cached", *args)
    whole = _train(data, tmp_path / "runs", "whole", *args, "cache.features=off")
    # Float rounding differs (a conv over a batch vs once per image) and training through blocks 4-5 amplifies it.
    tol = {"rtol": 1e-4, "atol": 1e-5} if freeze == "[1,2,3,4,5]" else {"rtol": 1e-3, "atol": 1e-4}
    assert cached["input"]["path"] == "features" and whole["input"]["path"] == "images"
    assert cached["input"]["frozen_prefix_blocks"] == (5 if freeze == "[1,2,3,4,5]" else 3)
    assert "cache.features=off" in whole["input"]["description"]
    m_cached, m_whole = _metrics(tmp_path / "runs" / "cached"), _metrics(tmp_path / "runs" / "whole")
    assert m_cached.shape == (3, 4)
    np.testing.assert_allclose(m_cached, m_whole, **tol)
    w_cached, w_whole = _weights(tmp_path / "runs" / "cached"), _weights(tmp_path / "runs" / "whole")
    assert w_cached.keys() == w_whole.keys()
    for k in w_cached:
        np.testing.assert_allclose(w_cached[k], w_whole[k], **tol, err_msg=k)
    assert m_cached[-1, 1] < m_cached[0, 1]  # it learns
    if freeze == "[1,2,3]":  # blocks 4-5 trained through the cached path; it really trains them
        assert cached["params"]["trainable"] > 7_000_000
    # the end of the run (calibration) read the same cached features through the trainable rest
    assert cached["calibration"]["outputs_from"].startswith("the feature cache of frozen blocks 1-")
    _rest_answers_as_the_whole_model(tmp_path / "runs" / "cached", tol)


def _rest_answers_as_the_whole_model(run: Path, tol: dict) -> None:
    """Logits and head features of every image from the feature cache through the rest of the network are the
    whole model's on the images; an entry missing from the cache goes through the frozen blocks instead."""
    from vgg_cli.config.schema import load_run_config
    from vgg_cli.data.index import index_from_manifest
    from vgg_cli.evaluation.calibrate import outputs
    from vgg_cli.evaluation.frozen import head_outputs, open_frozen
    from vgg_cli.model.load import load_model
    from vgg_cli.runs.rundir import RunDir

    paths = RunDir(run)
    cfg, index = load_run_config(paths.config), index_from_manifest(paths.read_manifest())
    files, shas = [str(index.root_of(e) / e.path) for e in index.files], [e.sha1 for e in index.files]
    rows, logits, feats = outputs(load_model(paths.best), None, files, shas, 8, features=True)
    assert rows == list(range(len(files))) and feats.shape == (len(files), 16)
    frozen = open_frozen(load_model(paths.best), cfg, paths)
    for drop in (0, 1):
        if drop:  # one entry gone (pruned by another job): computed here, the same answer
            frozen.store.path(shas[3]).unlink()
        got, z, f, cached = head_outputs(frozen, files, shas, 8, features=True)
        assert sorted(got) == rows and cached == len(files) - drop
        order = np.argsort(got)
        np.testing.assert_allclose(z[order], logits, **tol)
        np.testing.assert_allclose(f[order], feats, **tol)
    _validation_scores_from_the_cache(paths, cfg, tol)


def _validation_scores_from_the_cache(paths, cfg, tol: dict) -> None:
    """The end of a run evaluates its validation split from the cache (``cached_scores``): every answer is the
    whole model's on the images (probabilities, ranking, out-of-distribution score, unknown), and a file that is
    neither cached nor readable is reported as ``score`` reports it."""
    from dataclasses import replace

    from vgg_cli.data.index import index_from_manifest
    from vgg_cli.evaluation.frozen import cached_scores, content_hashes
    from vgg_cli.evaluation.scoring import answering, score, validation_set
    from vgg_cli.model.load import load_model

    data = validation_set(paths.root)
    data = replace(data, files=data.files + [str(paths.root / "gone.png")], truth=data.truth + [data.truth[0]])
    whole_model = load_model(paths.best)
    whole = score(whole_model, data, 8, options=answering(whole_model, paths.best))
    shas = content_hashes(index_from_manifest(paths.read_manifest()), data.files)
    assert shas[-1] is None and None not in shas[:-1]  # gone.png: through the frozen blocks, unreadable
    cut = load_model(paths.best)
    cached = cached_scores(cut, paths, data, shas, 8, answering(cut, paths.best), cfg)
    assert cached is not None and len(whole.scored) == len(cached.scored) == len(data.files) - 1
    assert cached.unreadable == whole.unreadable == [{"path": data.files[-1], "reason": "not found"}]
    assert cached.ranked == whole.ranked and cached.scores["accuracy"] == whole.scores["accuracy"]
    for (a, _), (b, _) in zip(cached.scored, whole.scored):
        assert a.path == b.path and a.unknown == b.unknown and [c for c, _ in a.top] == [c for c, _ in b.top]
        np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], **tol)
        np.testing.assert_allclose(a.logits, b.logits, **tol)
        assert a.ood_score is not None and np.isclose(a.ood_score, b.ood_score, rtol=1e-3)


@pytest.mark.slow
def test_feature_cache_is_reused_and_recomputes_only_changed_files(tmp_path):
    data = make_colour_dataset(tmp_path / "train", per_class=6, seed=5)
    runs = tmp_path / "runs"
    first = _train(data, runs, "r1")["input"]
    assert (first["computed"], first["reused"], first["entries"]) == (18, 0, 18)
    cache = runs / ".cache" / "features"
    entries = sorted(cache.glob("*/*/*.npy"))
    assert len(entries) == 18 and all(p.parent.parent.parent == cache for p in entries)

    second = _train(data, runs, "r2")["input"]
    assert (second["computed"], second["reused"]) == (0, 18)

    # Edit one image, add one, duplicate one under another name: two new entries, the duplicate shares.
    victim = sorted((data / "red").iterdir())[0]
    colour_image((250, 0, 0), np.random.default_rng(1)).save(victim)
    colour_image((0, 0, 250), np.random.default_rng(2)).save(data / "blue" / "new.png")
    shutil.copyfile(data / "green" / "green_000.png", data / "green" / "copy of green 0.png")
    third = _train(data, runs, "r3")["input"]
    assert (third["computed"], third["reused"], third["entries"]) == (2, 17, 19)  # 20 images, 19 contents

    # Another image size or another freeze point is another key: nothing is mixed up.
    other = _train(data, runs, "r4", "model.freeze_blocks=[1,2,3,4]")["input"]
    assert other["computed"] == 19 and other["cache_dir"] != third["cache_dir"]


@pytest.mark.slow
def test_small_ram_budget_reads_features_from_disk_with_the_same_result(tmp_path, data):
    full = _train(data, tmp_path / "runs", "ram")
    spill = _train(data, tmp_path / "runs", "disk", "cache.ram_mb=0")
    assert full["input"]["in_ram"] == full["input"]["entries"] and spill["input"]["in_ram"] == 0
    assert "read from" in spill["input"]["description"]
    np.testing.assert_allclose(_metrics(tmp_path / "runs" / "disk"), _metrics(tmp_path / "runs" / "ram"),
                               rtol=1e-6)


@pytest.mark.slow
def test_damaged_cache_entry_is_recomputed(tmp_path):
    data = make_colour_dataset(tmp_path / "train", per_class=4, seed=6)
    runs = tmp_path / "runs"
    _train(data, runs, "a")
    entry = sorted((runs / ".cache" / "features").glob("*/*/*.npy"))[0]
    entry.write_bytes(entry.read_bytes()[:50])  # as after a crash mid-write on a filesystem that lost the data
    again = _train(data, runs, "b")["input"]
    assert (again["computed"], again["reused"]) == (1, 11)


def test_disk_cap_prunes_least_recently_used_entries_of_other_runs(tmp_path):
    from vgg_cli.data.features import prune_cache

    root = tmp_path / "features"
    paths = []
    for i in range(6):
        p = root / "key" / f"{i:02d}" / f"{i:02d}{'0' * 38}.npy"
        p.parent.mkdir(parents=True)
        np.save(p, np.zeros(1000, np.float32))  # 4128 bytes each
        os.utime(p, (1000 + i, 1000 + i))
        paths.append(p)
    keep = {paths[0]}  # the oldest, but used by the current run
    removed = prune_cache(root, 3 * 4128, keep)
    assert removed == 3
    assert [p.exists() for p in paths] == [True, False, False, False, True, True]
    assert not (root / "key" / "01").exists()  # empty shard folders go too


@pytest.mark.slow
def test_augmentation_runs_the_whole_network_and_is_off_in_predict(tmp_path, data):
    summary = _train(data, tmp_path / "runs", "aug", "augment.flip=horizontal", "augment.rotation=0.05",
                     "augment.zoom=0.1", "augment.contrast=0.2", "augment.brightness=0.1",
                     "augment.translation=0.1")
    assert summary["input"]["path"] == "images" and summary["input"]["why"] == "augmentation is on"
    import keras

    model = keras.saving.load_model(tmp_path / "runs" / "aug" / "model" / "best.keras", compile=False)
    names = [l.name for l in model.layers]
    assert [n for n in names if n.startswith("augment_")] == [
        "augment_flip", "augment_rotation", "augment_zoom", "augment_translation", "augment_contrast",
        "augment_brightness"]
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
                  for p in sorted((data / "red").iterdir())[:4]]).astype("float32")
    inference = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), inference, rtol=1e-6)
    assert not np.allclose(np.asarray(model(x, training=True)), inference, atol=1e-4)  # augmentation is live in training
    img = tmp_path / "one.png"
    Image.fromarray(x[0].astype(np.uint8)).save(img)
    outs = [json.loads(run_cli(["predict", str(img), "--run", str(tmp_path / "runs" / "aug"), "--format",
                                "json"])[1])["probability"] for _ in range(2)]
    assert outs[0] == outs[1]
    np.testing.assert_allclose(outs[0], inference[0].max(), rtol=1e-4)
    # evaluate goes through the same inference path: repeated evaluations give the very same report
    reports = [json.loads(run_cli(["evaluate", "--run", str(tmp_path / "runs" / "aug"), "--json"])[1])
               for _ in range(2)]
    assert reports[0]["per_class"] == reports[1]["per_class"] and reports[0]["images"] > 0


def test_ram_image_cache_decodes_each_image_once(tmp_path):
    from vgg_cli.data.pipeline import ImageSource

    data = make_colour_dataset(tmp_path / "train", per_class=3, seed=8)
    files = sorted(str(p) for p in data.rglob("*.png"))
    cached = ImageSource(files, 16, ram_bytes=10 * 2**20)
    uncached = ImageSource(files, 16, ram_bytes=0)
    half = ImageSource(files, 16, ram_bytes=4 * 16 * 16 * 3)  # room for 4 of 9
    idx = np.arange(len(files))
    for _ in range(3):  # three "epochs"
        a, b, c = cached.get(idx[::-1]), uncached.get(idx[::-1]), half.get(idx[::-1])
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert (cached.decoded, uncached.decoded, half.decoded) == (9, 27, 4 + 3 * 5)
    for s in (cached, uncached, half):
        s.close()


@pytest.mark.slow
def test_image_cache_setting_is_reported(tmp_path, data):
    on = _train(data, tmp_path / "runs", "on", "model.freeze_blocks=[]", "train.epochs=1")
    off = _train(data, tmp_path / "runs", "off", "model.freeze_blocks=[]", "train.epochs=1", "cache.images=off")
    assert on["input"]["why"] == "block 1 is not frozen" and on["input"]["in_ram"] == 30
    assert off["input"]["in_ram"] == 0 and "no RAM image cache" in off["input"]["description"]


def test_prefetch_batches_overlaps_and_keeps_order():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from vgg_cli.data.pipeline import prefetch_batches

    next_batch_started = {x: threading.Event() for x in range(4, 8)}

    def load(x):
        if x in next_batch_started:
            next_batch_started[x].set()
        return x * 10

    seen = []
    with ThreadPoolExecutor(4) as pool:
        for start, batch in prefetch_batches(list(range(10)), load, 4, pool):
            if start == 0:  # the next batch loads while we work on this one (no sleeps: an event per load)
                assert all(e.wait(timeout=30) for e in next_batch_started.values())
            seen.append((start, batch))
    assert seen == [(0, [0, 10, 20, 30]), (4, [40, 50, 60, 70]), (8, [80, 90])]


class _ArraySource:
    """A source over an in-memory array (what ImageSource and FeatureSource provide, minus the files)."""

    def __init__(self, arrays):
        self.arrays, self.shape, self.dtype = arrays, arrays.shape[1:], arrays.dtype

    def get(self, idx):
        return self.arrays[idx]


def test_train_batches_follow_the_epoch_order_and_never_span_epochs():
    from vgg_cli.platform.backend import load_frameworks

    load_frameworks()
    from vgg_cli.data.pipeline import epoch_order, eval_batches, train_batches

    arrays = np.arange(12, dtype=np.float32).reshape(6, 2) * 10  # item i holds [20i, 20i+10]
    labels = np.array([0, 1, 2, 0, 1, 2])
    ids = [1, 2, 4, 5]  # the training items; 0 and 3 are validation items
    ds = train_batches(_ArraySource(arrays), ids, labels, 3, seed=7, first_epoch=1, epochs=3)
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [len(y) for _, y in batches] == [2, 2, 2, 2]  # epochs 1 and 2, each in 2 equal batches of at most 3
    for epoch, pair in ((1, batches[0:2]), (2, batches[2:4])):
        order = np.asarray(ids)[epoch_order(len(ids), 7, epoch)]
        got = np.concatenate([x for x, _ in pair])
        np.testing.assert_array_equal(got, arrays[order])
        np.testing.assert_array_equal(np.concatenate([y for _, y in pair]), labels[order])
    val = [(x.numpy(), y.numpy()) for x, y in eval_batches(_ArraySource(arrays), [3, 0], labels, 8)]
    np.testing.assert_array_equal(val[0][0], arrays[[3, 0]])
    # No tf.data autotuning: destroying an autotuned iterator waits for its optimisation thread, whose sleeps grow
    # to 60 s (measured: up to a minute idle when fit returned).
    assert ds.options().autotune.enabled is False


def test_feature_store_reads_only_complete_entries_of_its_shape(tmp_path):
    from vgg_cli.data.features import FeatureStore

    store = FeatureStore(tmp_path, "key", (2, 3), np.float32)
    sha = "ab" * 20
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    store.save(sha, arr)
    out = np.zeros((2, 3), np.float32)
    assert store.valid(sha) and store.load_into(sha, out)
    np.testing.assert_array_equal(out, arr)
    data = store.path(sha).read_bytes()
    store.path(sha).write_bytes(data[:-1])  # torn write
    assert not store.valid(sha) and not store.load_into(sha, out)
    store.path(sha).write_bytes(data + b"\0")  # trailing garbage
    assert not store.valid(sha) and not store.load_into(sha, out)
    FeatureStore(tmp_path, "key", (3, 2), np.float32).save(sha, arr.reshape(3, 2))  # another shape, same name
    assert not store.valid(sha) and not store.load_into(sha, out)
    assert not store.valid("cd" * 20)  # missing


def test_batches_of_an_epoch_differ_in_size_by_at_most_one():
    from vgg_cli.data.pipeline import batch_bounds

    assert list(np.diff(batch_bounds(161, 32))) == [27, 27, 27, 27, 27, 26]  # not 32 x 5 + a batch of 1
    assert list(np.diff(batch_bounds(160, 32))) == [32] * 5
    assert list(np.diff(batch_bounds(5, 32))) == [5]
    for n in range(1, 100):
        for bs in (1, 3, 8, 32):
            sizes = np.diff(batch_bounds(n, bs))
            assert sizes.sum() == n and len(sizes) == -(-n // bs) and sizes.max() <= bs
            assert sizes.max() - sizes.min() <= 1


def test_large_batch_buffers_are_their_own_memory_maps():
    import mmap

    from vgg_cli.data.pipeline import batch_buffer

    def root(a):
        while isinstance(a, np.ndarray) and a.base is not None:
            a = a.base
        return a.obj if isinstance(a, memoryview) else a

    small = batch_buffer((4, 8, 8, 3), np.uint8)
    assert small.base is None  # plain malloc below 1 MiB
    big = batch_buffer((32, 16, 16, 256), np.float32)  # 8 MiB: a batch of block-3 features at 128 px
    assert isinstance(root(big), mmap.mmap) and big.shape == (32, 16, 16, 256) and big.dtype == np.float32
    big[:] = 1.5  # writeable, and C-contiguous for readinto
    assert big.flags["C_CONTIGUOUS"] and float(big.sum()) == 1.5 * big.size


# A fresh process whose C library and clock are stand-ins, through public names only: ctypes.CDLL (how Python reaches
# glibc's malloc_trim) gives a recorder for libc.so.6, and time.monotonic is a hand-moved clock.
def test_making_batches_trims_the_heap_at_most_every_interval():
    """Training batches hand freed C-heap memory back to the OS on a clock, not once per epoch, so memory does not
    grow with the epoch's length (the dataset's size)."""
    from vgg_cli.data import pipeline
    from vgg_cli.platform.device import Trimmer, trimming_with

    trims, clock = [], [1000.0]

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(pad)

    with trimming_with(Trimmer(libc=FakeLibc, clock=lambda: clock[0])):
        for _ in range(5):  # five batches within one interval: one trim
            pipeline.batch_buffer((32, 16, 16, 256), np.float32)
        assert trims == [0]
        clock[0] += pipeline.BATCH_TRIM_INTERVAL_S - 0.01
        pipeline.batch_buffer((2, 4), np.uint8)
        assert len(trims) == 1
        clock[0] += 0.02
        pipeline.batch_buffer((2, 4), np.uint8)
        assert len(trims) == 2


@pytest.mark.slow
def test_cache_settings_do_not_make_a_new_job(tmp_path, data):
    """--if-changed: changing only cache.* is no reason to retrain (results do not depend on it)."""
    runs = tmp_path / "runs"
    _train(data, runs, "first")
    code, out, err = run_cli(["train", "--if-changed", "--json", f"data.train_dir={data}", f"output.dir={runs}",
                              *FAST, "cache.ram_mb=1", "cache.images=off"])
    assert code == 0, err
    assert json.loads(out)["status"] == "nothing_to_do"
