"""data.resize (squash | crop | pad): how a non-square image becomes the model's S x S input, the same in training,
the caches, prediction, Grad-CAM, evaluation and exports, and recorded in the model."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TRAIN_ARGS, run_cli
from vgg_cli.data.images import BadImage, decode, load_image, placement, resized_size

W, H, S = 640, 427, 224
GREEN, RED, BLUE = (0, 200, 0), (255, 0, 0), (0, 0, 255)


def stripes(w: int = W, h: int = H) -> Image.Image:
    """Green edges (an eighth of the width each), red left centre, blue right centre."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 8] = GREEN
    arr[:, w // 8: w // 2] = RED
    arr[:, w // 2: w - w // 8] = BLUE
    arr[:, w - w // 8:] = GREEN
    return Image.fromarray(arr)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def old_decode(data: bytes, size: int) -> np.ndarray:
    """decode() as it was before data.resize (for RGB files): draft, then both sides resized."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (size, size))
    img.load()
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, np.uint8)


def is_colour(region: np.ndarray, rgb) -> bool:
    return bool((region == np.asarray(rgb, np.uint8)).all())


# ------------------------------------------------------------------------------------------------ the three modes


def test_squash_is_todays_decode_bit_for_bit():
    img = stripes()
    for data in (png_bytes(img), jpeg_bytes(img), jpeg_bytes(stripes(2560, 1708))):
        want = old_decode(data, S)
        np.testing.assert_array_equal(decode(data, S), want)
        np.testing.assert_array_equal(decode(data, S, "squash"), want)
    out = decode(png_bytes(img), S)
    # both halves whole, the green edges kept: the picture is squeezed, nothing is cut
    assert is_colour(out[:, :26], GREEN) and is_colour(out[:, -26:], GREEN)
    assert is_colour(out[:, 30:108], RED) and is_colour(out[:, 116:194], BLUE)


def test_crop_keeps_the_centre_square():
    out = decode(png_bytes(stripes()), S, "crop")
    assert out.shape == (S, S, 3)
    # short side 427 -> 224, long 640 -> 336; the centre 224 columns (56..280) are kept
    assert resized_size(W, H, S, "crop") == (336, 224)
    want = np.asarray(stripes().resize((336, 224), Image.Resampling.BILINEAR, reducing_gap=3.0).crop((56, 0, 280, 224)))
    np.testing.assert_array_equal(out, want)
    assert not (out == np.asarray(GREEN, np.uint8)).all(axis=-1).any()  # the edges are cut away
    assert is_colour(out[:, :109], RED) and is_colour(out[:, 115:], BLUE)  # the halves meet in the middle
    # portrait: the same, the other way round
    tall = decode(png_bytes(stripes().transpose(Image.Transpose.TRANSPOSE)), S, "crop")
    np.testing.assert_array_equal(tall, want.transpose(1, 0, 2))


def test_pad_keeps_everything_with_black_bars_top_and_bottom():
    out = decode(png_bytes(stripes()), S, "pad")
    assert out.shape == (S, S, 3)
    # long side 640 -> 224, short 427 -> 149, centred: 37 black rows above, 38 below
    assert resized_size(W, H, S, "pad") == (224, 149)
    assert (out[:37] == 0).all() and (out[186:] == 0).all()
    inner = np.asarray(stripes().resize((224, 149), Image.Resampling.BILINEAR, reducing_gap=3.0))
    np.testing.assert_array_equal(out[37:186], inner)
    assert is_colour(out[37:186, :26], GREEN) and is_colour(out[37:186, -26:], GREEN)
    assert is_colour(out[37:186, 30:108], RED) and is_colour(out[37:186, 116:194], BLUE)
    # portrait: bars left and right
    tall = decode(png_bytes(stripes().transpose(Image.Transpose.TRANSPOSE)), S, "pad")
    np.testing.assert_array_equal(tall, out.transpose(1, 0, 2))


def test_square_images_are_the_same_in_every_mode():
    arr = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(arr))
    want = decode(data, 32)
    for mode in ("crop", "pad"):
        np.testing.assert_array_equal(decode(data, 32, mode), want)


def test_extreme_aspect_ratios_stay_small():
    strip = Image.new("RGB", (20000, 3), (9, 8, 7))
    for mode in ("squash", "crop", "pad"):
        out = decode(png_bytes(strip), S, mode)
        assert out.shape == (S, S, 3)
    assert is_colour(decode(png_bytes(strip), S, "crop"), (9, 8, 7))
    padded = decode(png_bytes(strip), S, "pad")
    assert (padded.reshape(-1, 3) == 0).all(axis=1).sum() == S * (S - 1)  # one row of image, the rest black


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="squash, crop, pad"):
        decode(png_bytes(stripes()), S, "stretch")


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_jpeg_draft_never_goes_below_what_the_mode_needs(monkeypatch, mode):
    """libjpeg's reduced-size decoding stays valid: the image it gives is at least as large as what the mode resizes
    to (pad may reduce more than squash and crop, whose short side must stay >= S)."""
    from PIL import JpegImagePlugin

    seen = []
    real = JpegImagePlugin.JpegImageFile.draft

    def draft(self, *args, **kw):
        out = real(self, *args, **kw)
        seen.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    big = stripes(2560, 1708)
    out = decode(jpeg_bytes(big), S, mode)
    (w, h), = seen
    need = (S, S) if mode != "pad" else resized_size(2560, 1708, S, "pad")
    assert w >= need[0] and h >= need[1] and (w, h) != (2560, 1708)  # reduced, never below
    if mode == "pad":
        assert (w, h) == (320, 214)  # 1/8: its short side need only be 149
    full = decode(png_bytes(big), S, mode)  # a PNG: no draft, every pixel decoded
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 2


def test_load_image_and_placement(tmp_path):
    p = tmp_path / "wide.png"
    stripes().save(p)
    np.testing.assert_array_equal(load_image(p, S, "crop"), decode(p.read_bytes(), S, "crop"))
    src, dst = placement(W, H, S, "crop")
    assert dst == (0, 0, S, S) and src[1] == 0 and src[3] == H
    assert abs(src[0] - 106.67) < 0.01 and abs(src[2] - 533.33) < 0.01
    assert placement(W, H, S, "pad") == ((0.0, 0.0, float(W), float(H)), (0, 37, 224, 186))
    assert placement(W, H, S, "squash") == ((0.0, 0.0, float(W), float(H)), (0, 0, S, S))


def test_bad_images_still_fail_with_their_reason():
    with pytest.raises(BadImage):
        decode(b"not an image", S, "crop")


# ------------------------------------------------------------------------------------------------ sources and caches


def _files(tmp_path: Path, n: int = 3) -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        stripes(60 + 10 * i, 40).save(p)
        out.append(str(p))
    return out


def test_image_source_decodes_in_its_mode(tmp_path):
    from vgg_cli.data.pipeline import ImageSource

    files = _files(tmp_path)
    for mode in ("squash", "crop", "pad"):
        source = ImageSource(files, 32, ram_bytes=10 * 2**20, resize=mode)
        try:
            got = source.get(np.arange(len(files)))
            again = source.get(np.arange(len(files)))  # from the RAM cache
        finally:
            source.close()
        want = np.stack([load_image(f, 32, mode) for f in files])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(again, want)


def test_feature_source_computes_from_images_in_its_mode(tmp_path):
    from vgg_cli.data.features import FeatureSource, FeatureStore

    files = _files(tmp_path)
    shas = [hashlib.sha1(Path(f).read_bytes()).hexdigest() for f in files]
    store = FeatureStore(tmp_path / "cache", "key", (32, 32, 3), np.float32)
    source = FeatureSource(store, shas, ram_bytes=0)
    source.fill(lambda x: x.astype(np.float32), files, 32, batch_size=2, resize="pad")
    want = np.stack([load_image(f, 32, "pad") for f in files]).astype(np.float32)
    np.testing.assert_array_equal(source.get(np.arange(len(files))), want)
    Path(store.path(shas[1])).unlink()  # removed during training: recomputed in the same mode
    np.testing.assert_array_equal(source.get(np.arange(len(files))), want)


def _prefix():
    from vgg_cli.config.schema import load_config
    from vgg_cli.model.build import build_model, split_frozen_prefix

    model, _ = build_model(load_config(None, ["model.weights=none"]).model, 32, ["a", "b"])
    return split_frozen_prefix(model, 1)[0]


def test_feature_cache_keys_differ_by_mode_and_squash_keeps_its_old_key():
    from vgg_cli.data.features import FORMAT, prefix_key
    from vgg_cli.data.images import DECODER_VERSION

    prefix = _prefix()
    keys = {mode: prefix_key(prefix, "vgg16", 1, 32, mode) for mode in ("squash", "crop", "pad")}
    assert len(set(keys.values())) == 3
    assert prefix_key(prefix, "vgg16", 1, 32) == keys["squash"]
    # the key of a cache written before data.resize existed
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0vgg16\0{1}\0{32}\0{DECODER_VERSION}\0vgg-bgr-mean\0"
             f"{np.dtype(prefix.output.dtype).name}\0".encode())
    for w in prefix.weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(f"{w.path}:{a.dtype}:{a.shape}\0".encode())
        h.update(a.tobytes())
    assert keys["squash"] == h.hexdigest()[:32]


# ------------------------------------------------------------------------------------------------ the model records it


def _model(**kw):
    from vgg_cli.config.schema import load_config
    from vgg_cli.model.build import build_model

    return build_model(load_config(None, ["model.weights=none", "model.head.dense=[8]"]).model, 32, ["a", "b"],
                       **kw)[0]


def _strip_resize(path: Path, out: Path) -> None:
    """A copy of a .keras file as an older vgg wrote it: no ``resize`` in the preprocessing layer's config."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)

                def drop(obj):
                    if isinstance(obj, dict):
                        if obj.get("class_name") == "VGGPreprocess":
                            assert obj["config"].pop("resize") == "squash"
                        for v in obj.values():
                            drop(v)
                    elif isinstance(obj, list):
                        for v in obj:
                            drop(v)

                drop(config)
                data = json.dumps(config).encode()
            dst.writestr(item, data)


def test_saved_model_records_the_mode_and_old_models_read_as_squash(tmp_path):
    from vgg_cli.model.layers import VGGPreprocess
    from vgg_cli.model.load import load_model, resize_of

    for mode in ("crop", "pad"):
        model = _model(resize=mode)
        assert resize_of(model) == mode and model.get_layer("preprocess").get_config()["resize"] == mode
        model.save(tmp_path / f"{mode}.keras")
        assert resize_of(load_model(tmp_path / f"{mode}.keras")) == mode
    old = _model()  # built without the argument
    assert resize_of(old) == "squash"
    old.save(tmp_path / "squash.keras")
    _strip_resize(tmp_path / "squash.keras", tmp_path / "older.keras")
    assert b'"resize"' not in zipfile.ZipFile(tmp_path / "older.keras").read("config.json")
    loaded = load_model(tmp_path / "older.keras")
    assert resize_of(loaded) == "squash"
    np.testing.assert_array_equal(loaded.get_weights()[0], old.get_weights()[0])
    assert VGGPreprocess.from_config({"name": "preprocess"}).resize == "squash"
    with pytest.raises(ValueError, match="resize"):
        VGGPreprocess(resize="stretch")


def test_export_description_says_how_to_resize():
    from vgg_cli.export.formats import INPUT_DOC, _description

    squash = _description("onnx", ["a", "b"], 32)
    assert squash["input"]["description"] == INPUT_DOC.format(s=32) and squash["resize"] == "squash"
    crop = _description("onnx", ["a", "b"], 32, "crop")
    assert crop["resize"] == "crop" and crop["input"]["resize"] == "crop"
    assert "short side is 32" in crop["input"]["description"] and "centre 32x32" in crop["input"]["description"]
    pad = _description("saved_model", ["a", "b"], 32, "pad")
    assert "long side is 32" in pad["input"]["description"] and "black (0) bars" in pad["input"]["description"]
    assert "raw RGB pixels 0-255" in pad["input"]["description"]


def test_gradcam_overlay_follows_the_mode():
    from vgg_cli.inference.gradcam import heat_on_original

    heat = np.ones((14, 14), np.float32)
    full, mask = heat_on_original(heat, (W, H), "squash", S)
    assert mask is None and full.shape == (H, W)
    crop, mask = heat_on_original(heat, (W, H), "crop", S)
    assert crop.shape == (H, W) and mask[:, 107:533].all() and not mask[:, :106].any() and not mask[:, 534:].any()
    assert np.allclose(crop[mask], 1.0) and (crop[~mask] == 0).all()
    # pad: the bars (rows of the input outside the image) are left out; hot bars, cold image -> a cold original
    bars = np.zeros((14, 14), np.float32)
    bars[:2], bars[-2:] = 1.0, 1.0
    pad, mask = heat_on_original(bars, (W, H), "pad", S)
    assert mask is None and pad.shape == (H, W)
    assert pad[40:-40].max() < 0.05


# ------------------------------------------------------------------------------------------------ end to end


def _wide_dataset(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """Classes by the colour of the image's centre; the left and right thirds are noise (what crop cuts off)."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (60, 40) if i % 2 == 0 else (40, 56)
            arr = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
            cx, cy = w // 2, h // 2
            r = min(w, h) // 2
            centre = np.asarray(rgb) * rng.uniform(0.75, 1.0) + rng.normal(0, 20, (2 * r, 2 * r, 3))
            arr[cy - r:cy + r, cx - r:cx + r] = centre
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:03d}.png")
    return root


@pytest.mark.slow
def test_train_with_crop_then_predict_follows_the_run(tmp_path):
    from vgg_cli.inference.gradcam import GradCam, overlay
    from vgg_cli.model.load import class_names_of, load_model, resize_of

    data = _wide_dataset(tmp_path / "train")
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "data.resize=crop",
                              "output.name=crop", *TRAIN_ARGS])
    assert code in (0, 3), err
    run = runs / "crop"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["input"]["path"] == "features"
    model = load_model(run / "model" / "best.keras")
    assert resize_of(model) == "crop", "training/run.py must pass resize=cfg.data.resize to build_model"
    probe = tmp_path / "probe.png"
    arr = np.random.default_rng(5).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    arr[4:36, 20:52] = (220, 40, 40)
    Image.fromarray(arr).save(probe)
    code, out, err = run_cli(["predict", str(probe), "--run", str(run), "--format", "json", "--top-k", "3"])
    assert code == 0, err
    got = {d["label"]: d["probability"] for d in json.loads(out)["top_k"]}
    x = decode(probe.read_bytes(), 32, "crop")[None]
    # short side 40 -> 32, long 72 -> 58, the centre 32 columns (13..45)
    centre = Image.fromarray(arr).resize((58, 32), Image.Resampling.BILINEAR, reducing_gap=3.0).crop((13, 0, 45, 32))
    np.testing.assert_array_equal(x[0], np.asarray(centre))
    want = np.asarray(model.predict(x, verbose=0))[0]
    classes = class_names_of(model)
    # a single image is predicted by the NumPy engine: Keras' probabilities to 1e-5 (docs/speed.md)
    assert got == pytest.approx({c: float(want[i]) for i, c in enumerate(classes)}, abs=1e-5)
    squashed = np.asarray(model.predict(decode(probe.read_bytes(), 32, "squash")[None], verbose=0))[0]
    assert np.abs(squashed - want).max() > 1e-4  # the mode made a difference: predict followed the run, not squash
    # Grad-CAM decodes the same way and lays the map over the centre the model saw
    (path, cam), = GradCam(model).of_files([str(probe)])
    assert cam.resize == "crop" and cam.image_size == 32
    assert overlay(path, cam).size == (72, 40)
    # evaluation reports the mode
    code, out, err = run_cli(["evaluate", "--run", str(run), "--json"])
    assert code == 0, err
    assert json.loads(out)["resize"] == "crop"
