"""The model: freezing per block, in-model preprocessing, every way to get backbone weights, and their errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from tests.conftest import run_cli
from vgg_cli.config.schema import load_config
from vgg_cli.errors import ConfigError, NoInputError
from vgg_cli.model.build import BLOCK_CONVS, build_backbone, build_model, conv_layers_by_block
from vgg_cli.model.load import class_names_of, load_model
from vgg_cli.model.weights import IMAGENET_NOTOP

S = 32
CLASSES = ["a", "b", "c"]


def model_cfg(**over):
    args = [f"model.{k}={v}" for k, v in over.items()]
    return load_config(None, args).model


def backbone_of(model: keras.Model) -> keras.Model:
    return next(l for l in model.layers if isinstance(l, keras.Model))


def images(n=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3)).astype("float32")


@pytest.mark.parametrize("arch,freeze", [("vgg16", [1, 3]), ("vgg16", []), ("vgg19", [1, 2, 3, 4, 5]),
                                         ("vgg19", [5])])
def test_freeze_flags_per_block(arch, freeze):
    model, _ = build_model(model_cfg(arch=arch, weights="none", freeze_blocks=freeze), S, CLASSES)
    by_block = conv_layers_by_block(backbone_of(model))
    assert [len(by_block[b]) for b in range(1, 6)] == list(BLOCK_CONVS[arch])
    for block, convs in by_block.items():
        assert all(layer.trainable == (block not in freeze) for layer in convs), block
    from vgg_cli.config.schema import head_norm
    from vgg_cli.model.layers import Standardize

    norm = head_norm(model_cfg().head.norm, freeze)  # auto: standard when all five blocks are frozen, else batch
    assert norm == ("standard" if len(freeze) == 5 else "batch")
    head = [l for l in model.layers if l.name.startswith("head_")]
    # the head's standardisation is fitted from the data once, never trained (model.head.norm: standard)
    standardize = [l for l in head if isinstance(l, Standardize)]
    assert len(standardize) == (norm == "standard")
    assert head and all(l.trainable != isinstance(l, Standardize) for l in head)
    assert all(not l.trainable_weights and len(l.non_trainable_weights) == 3 for l in standardize)
    # the trainable weights are exactly the unfrozen convs (kernel+bias) plus the head's dense layers and its
    # BatchNormalization's scale and offset (with model.head.norm: batch)
    n_dense = sum(1 for l in head if isinstance(l, keras.layers.Dense))
    n_norm = sum(1 for l in head if isinstance(l, keras.layers.BatchNormalization))
    unfrozen = sum(len(by_block[b]) for b in range(1, 6) if b not in freeze)
    assert n_norm == (norm == "batch")
    assert len(model.trainable_weights) == 2 * unfrozen + 2 * n_dense + 2 * n_norm


def test_preprocessing_inside_model_matches_keras():
    from vgg_cli.model.layers import VGGPreprocess

    x = images()
    ours = keras.ops.convert_to_numpy(VGGPreprocess()(x))
    theirs = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)


def test_head_shape_and_class_names():
    cfg = model_cfg(weights="none", **{"head.dense": "[16,8]", "head.pooling": "flatten"})
    model, _ = build_model(cfg, S, CLASSES)
    probs = np.asarray(model.predict_on_batch(images()))
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert class_names_of(model) == CLASSES
    assert [l.name for l in model.layers if isinstance(l, keras.layers.Dense)] == [
        "head_dense1", "head_dense2", "head_logits"]


def _reference_backbone(arch="vgg16", seed=7) -> keras.Model:
    keras.utils.set_random_seed(seed)
    bb = build_backbone(arch, S)
    for w in bb.weights:  # distinctive values so a successful load is unmistakable
        w.assign(np.random.default_rng(seed).normal(0, 0.05, w.shape).astype("float32"))
    return bb


def _assert_backbone_equals(model: keras.Model, ref: keras.Model) -> None:
    got = backbone_of(model)
    for a, b in zip(got.weights, ref.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def _outputs(weights: str, arch="vgg16") -> np.ndarray:
    keras.utils.set_random_seed(0)  # same head init for both models: only the backbone differs
    model, _ = build_model(model_cfg(arch=arch, weights=weights), S, CLASSES)
    return model, np.asarray(model.predict_on_batch(images()))


def test_weights_from_weights_h5_file_load_and_change_outputs(tmp_path):
    ref = _reference_backbone()
    path = tmp_path / "backbone.weights.h5"
    ref.save_weights(path)
    model, out = _outputs(str(path))
    _assert_backbone_equals(model, ref)
    _, out_random = _outputs("none")
    assert np.abs(out - out_random).max() > 1e-3


def _write_keras_applications_h5(bb: keras.Model, path: Path) -> None:
    """The layout of keras.applications' vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5."""
    with h5py.File(path, "w") as f:
        names = [l.name for l in bb.layers]
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        for layer in bb.layers:
            g = f.create_group(layer.name)
            wnames = [f"{layer.name}_W_1:0", f"{layer.name}_b_1:0"][: len(layer.weights)]
            g.attrs["weight_names"] = [n.encode() for n in wnames]
            for n, w in zip(wnames, layer.get_weights()):
                g.create_dataset(n, data=w)


def test_weights_from_keras_applications_h5_layout(tmp_path):
    ref = _reference_backbone(seed=3)
    path = tmp_path / IMAGENET_NOTOP["vgg16"][0]
    _write_keras_applications_h5(ref, path)
    model, source = build_model(model_cfg(weights=str(path)), S, CLASSES)
    _assert_backbone_equals(model, ref)
    assert str(path.resolve()) in source


def test_wrong_arch_weights_file_is_a_config_error(tmp_path):
    path = tmp_path / "vgg19.h5"
    _write_keras_applications_h5(_reference_backbone("vgg19"), path)
    with pytest.raises(ConfigError, match="set model.arch"):
        build_model(model_cfg(arch="vgg16", weights=str(path)), S, CLASSES)
    wpath = tmp_path / "vgg19.weights.h5"
    _reference_backbone("vgg19").save_weights(wpath)
    with pytest.raises(ConfigError, match="does not fit the vgg16 backbone"):
        build_model(model_cfg(arch="vgg16", weights=str(wpath)), S, CLASSES)


def test_weights_path_errors(tmp_path):
    with pytest.raises(NoInputError, match="not found"):
        build_model(model_cfg(weights=str(tmp_path / "nope.h5")), S, CLASSES)
    with pytest.raises(NoInputError, match="did you mean model.weights=imagenet"):
        build_model(model_cfg(weights="imagenett"), S, CLASSES)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(NoInputError, match="not a readable HDF5"):
        build_model(model_cfg(weights=str(tmp_path / "junk.h5")), S, CLASSES)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown type"):
        build_model(model_cfg(weights=str(tmp_path / "w.txt")), S, CLASSES)


def test_weights_from_a_saved_model_file(tmp_path):
    source, _ = build_model(model_cfg(weights="none"), S, ["x", "y"])
    for w in backbone_of(source).weights:
        w.assign(np.full(w.shape, 0.01, dtype="float32"))
    path = tmp_path / "m.keras"
    source.save(path)
    model, desc = build_model(model_cfg(weights=str(path)), S, CLASSES)  # different classes: head is new
    _assert_backbone_equals(model, backbone_of(source))
    assert class_names_of(model) == CLASSES and "m.keras" in desc
    with pytest.raises(ConfigError, match="set model.arch=vgg16"):
        build_model(model_cfg(arch="vgg19", weights=str(path)), S, CLASSES)


def test_saved_model_round_trip_in_safe_mode(tmp_path):
    model, _ = build_model(model_cfg(weights="none"), S, CLASSES)
    path = tmp_path / "m.keras"
    model.save(path)
    again = load_model(path)
    assert class_names_of(again) == CLASSES
    np.testing.assert_allclose(again.predict_on_batch(images()), model.predict_on_batch(images()), rtol=1e-5,
                               atol=1e-6)
    (tmp_path / "bad.keras").write_bytes(b"zip? no")
    with pytest.raises(NoInputError, match="is not a whole .keras file .7 bytes, not a complete zip archive"):
        load_model(tmp_path / "bad.keras")  # (Keras itself says "File not found" of it)
    (tmp_path / "half.keras").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NoInputError, match="half.keras' is not a whole .keras file"):
        load_model(tmp_path / "half.keras")


def _vgg(args: list[str], env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "vgg_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _offline_env(tmp_path: Path) -> dict:
    # A dead proxy makes the download fail fast and the same way with or without internet.
    dead = "http://127.0.0.1:9"
    return {"KERAS_HOME": str(tmp_path / "keras_home"), "HTTPS_PROXY": dead, "HTTP_PROXY": dead,
            "https_proxy": dead, "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""}


@pytest.mark.slow
def test_offline_imagenet_is_one_actionable_line(tmp_path, colour_data):
    env = _offline_env(tmp_path)
    runs = tmp_path / "runs"
    r = _vgg(["train", f"data.train_dir={colour_data}", "data.image_size=32", f"output.dir={runs}"], env, tmp_path)
    assert r.returncode == 66, r.stderr
    lines = r.stderr.strip().splitlines()
    fname, url, md5 = IMAGENET_NOTOP["vgg16"]
    # Keras' own "Downloading data from URL" notice (on stderr), then exactly one error line
    assert lines[:-1] == [f"Downloading data from {url}"], r.stderr
    assert lines[-1].startswith("error: ImageNet weights for vgg16 are not available"), r.stderr
    target = str(tmp_path / "keras_home" / "models" / fname)
    for needed in (url, target, md5, "model.weights=PATH", "model.weights=none"):
        assert needed in lines[-1]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""  # Keras' "Downloading data from ..." must not pollute `run=$(vgg train ...)`
    assert not runs.exists()  # nothing was written: no output.dir left holding an empty .lock
    assert not runs.exists() or [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []  # no run


@pytest.mark.slow
def test_truncated_imagenet_cache_file_is_explained(tmp_path, colour_data):
    env = _offline_env(tmp_path)
    fname = IMAGENET_NOTOP["vgg19"][0]
    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    (models / fname).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an interrupted download
    r = _vgg(["train", f"data.train_dir={colour_data}", "data.image_size=32", "model.arch=vgg19",
              f"output.dir={tmp_path / 'runs'}"], env, tmp_path)
    assert r.returncode == 66
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and r.stderr.count("error:") == 1
    assert "incomplete or corrupt" in line and str(models / fname) in line


def test_summary_original_vgg16_has_paper_parameter_count():
    code, out, err = run_cli(["summary", "--original", "vgg16"])
    assert code == 0, err
    assert "138,357,544" in out


def test_summary_shows_frozen_blocks(colour_data):
    code, out, err = run_cli(["summary", f"data.train_dir={colour_data}", "data.image_size=32",
                              "model.freeze_blocks=[1,2]"])
    assert code == 0, err
    assert "block1: 2 conv layers, 38,720 params, frozen" in out
    assert "block3: 3 conv layers, 1,475,328 params, trainable" in out
    assert "head: 3 classes (class folders in" in out


@pytest.mark.parametrize("cached", [True, False])
def test_training_loss_is_computed_from_logits_so_confident_mistakes_still_learn(cached):
    """A new head can start confidently wrong: the true class's float32 probability underflows, and a loss on the
    softmax output (clipped at 1e-7) has no gradient there. Training fits a view ending at the logits instead."""
    from vgg_cli.model.build import logits_view, split_frozen_prefix
    from vgg_cli.model.optim import compile_model

    cfg = load_config(None, ["model.weights=none", "model.head.dense=[]", "model.head.dropout=0"])
    keras.utils.set_random_seed(0)
    model, _ = build_model(cfg.model, S, CLASSES)
    compile_model(model, cfg.train, len(CLASSES), learning_rate=1e-3)
    logits = model.get_layer("head_logits")
    kernel, bias = logits.get_weights()
    x = images(8)
    y = np.full(8, 2, np.int32)
    bias[:] = [500.0, 0.0, -500.0]  # class "c" has probability exp(-1000): 0 in float32
    logits.set_weights([kernel, bias])
    assert np.asarray(model.predict_on_batch(x))[:, 2].max() == 0.0
    if cached:
        prefix, fit_model = split_frozen_prefix(model, 5)
        inputs = np.asarray(prefix.predict_on_batch(x))
    else:
        fit_model, inputs = logits_view(model), x
    assert fit_model.output.shape[-1] == 3 and fit_model.layers[-1].name == "head_logits"
    compile_model(fit_model, cfg.train, len(CLASSES), optimizer=model.optimizer, from_logits=True)
    loss = fit_model.train_on_batch(inputs, y, return_dict=True)["loss"]
    assert loss > 900  # the real loss (about 1000), not -log(1e-7) = 16.1
    assert logits.get_weights()[1][2] > bias[2]  # the true class's bias moved up: there was a gradient


NO_RANDOM_PROGRAMS = r"""
import logging, os, sys
os.environ["KERAS_BACKEND"] = "jax"
import jax
jax.config.update("jax_log_compiles", True)
compiled = []
class Grab(logging.Handler):
    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            compiled.append(msg.split(" with ")[0])
logging.getLogger("jax").addHandler(Grab())
logging.getLogger("jax").setLevel(logging.DEBUG)
import keras
from vgg_cli.model.build import build_backbone
from vgg_cli.model.weights import he_initialise
keras.utils.set_random_seed(3)
backbone = build_backbone("vgg16", 32)
he_initialise(backbone)
print("\n".join(compiled))
print("KERNEL", float(backbone.get_layer("block2_conv1").kernel.numpy().std()))
import json, numpy as np
from vgg_cli.config.schema import load_config
from vgg_cli.model.build import build_model
from vgg_cli.model.load import load_model
model, _ = build_model(load_config(None, ["model.weights=none"]).model, 32, ["a", "b"])
model.save(sys.argv[1])
compiled.clear()
loaded = load_model(sys.argv[1])
print("\n".join("LOAD " + c for c in compiled))
plain = keras.saving.load_model(sys.argv[1])
x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype("uint8")
print("SAME", float(np.abs(loaded.predict_on_batch(x) - plain.predict_on_batch(x)).max()),
      json.dumps(loaded.get_config()) == json.dumps(plain.get_config()))
"""


@pytest.mark.slow
def test_backbone_build_and_model_load_compile_no_random_number_program_on_jax(tmp_path):
    """On JAX every Keras initializer call compiles a program per kernel shape (the issue's 8 s model build, and
    as long again per model load); the backbone's placeholder weights and its He init come from NumPy instead,
    and a loaded model takes every weight from its file, with the same config and outputs as Keras' own load."""
    pytest.importorskip("jax")
    p = subprocess.run([sys.executable, "-c", NO_RANDOM_PROGRAMS, str(tmp_path / "m.keras")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-3000:]
    programs = [line for line in p.stdout.splitlines() if line.startswith("Compiling ")]
    assert programs, "jax_log_compiles printed nothing: the check would pass vacuously"
    assert not [x for x in programs if any(k in x for k in ("uniform", "normal", "random", "threefry"))], programs
    loading = [line for line in p.stdout.splitlines() if line.startswith("LOAD ")]
    assert not [x for x in loading if any(k in x for k in ("uniform", "normal", "random", "threefry"))], loading
    assert p.stdout.split("SAME")[1].split() == ["0.0", "True"]
    std = float(p.stdout.split("KERNEL")[1].split()[0])
    assert std == pytest.approx(np.sqrt(2 / (3 * 3 * 64)), rel=0.05)  # He-normal for fan-in 3x3x64


def test_he_normal_on_the_host_matches_keras_statistics():
    from vgg_cli.model.weights import he_normal

    a = he_normal(np.random.default_rng(0), (3, 3, 256, 256))
    b = keras.ops.convert_to_numpy(keras.initializers.HeNormal(seed=0)((3, 3, 256, 256)))
    assert a.dtype == np.float32 and a.shape == b.shape
    assert a.std() == pytest.approx(b.std(), rel=0.02) and abs(a.mean()) < 1e-3
    limit = 2 * np.sqrt(2 / (3 * 3 * 256)) / 0.87962566103423978
    assert np.abs(a).max() <= limit + 1e-6 and np.abs(b).max() <= limit + 1e-6
    assert not np.array_equal(a, he_normal(np.random.default_rng(1), (3, 3, 256, 256)))
    np.testing.assert_array_equal(a, he_normal(np.random.default_rng(0), (3, 3, 256, 256)))
