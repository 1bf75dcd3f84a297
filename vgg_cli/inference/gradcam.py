"""Grad-CAM (Selvaraju et al., 2017): where in an image the evidence for a class lies, for any trained run.

The model is cut after a conv layer (the backbone's last, ``block5_conv3`` in VGG16, unless told otherwise): the
first part gives that layer's feature maps A (h x w x K), the rest maps them to the class logits. The gradient of
the chosen class's logit with respect to A, averaged over the map, weighs each of the K channels; the weighted sum
of the maps, with negative evidence cut off (ReLU) and scaled to 0..1, is the heatmap. It has the conv layer's
resolution (1/16 of the input in block 5) and is stretched over the original image for the overlay: over all of it
for a model trained with ``data.resize=squash``, over the centre region it saw for ``crop`` (the parts cropped away
are shown dimmed, without colours), and without the black bars for ``pad``.

Gradients come from the backend Keras runs on (TensorFlow's GradientTape, ``jax.grad``, PyTorch autograd); the
rest is ``keras`` and NumPy, so the maps agree across backends.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vgg_cli.data.images import load_image, load_original, placement
from vgg_cli.errors import UsageError
from vgg_cli.fsio import write_bytes
from vgg_cli.task.head import softmax

OVERLAY_ALPHA = 0.45  # how much of the heatmap colours the image
OUTSIDE_DIM = 0.5  # brightness of the parts of an image the model did not see (cropped away: data.resize=crop)


@dataclass
class Cam:
    heatmap: np.ndarray  # (h, w) float32 in [0, 1] at the conv layer's resolution
    class_index: int  # the class it explains
    probability: float  # the model's probability of that class
    resize: str = "squash"  # how the image was made square for the model (data.resize): where the map lies on it
    image_size: int | None = None  # the model's input side


class GradCam:
    """Grad-CAM heatmaps of a loaded model (``vgg_cli.model.load.load_model``)."""

    def __init__(self, model, layer: str | None = None):
        from vgg_cli.model.build import last_conv_name, split_after
        from vgg_cli.model.load import class_names_of, image_size_of, resize_of

        self.layer = layer or last_conv_name(model)
        self.resize, self.size = resize_of(model), image_size_of(model)
        try:
            self.prefix, self.rest = split_after(model, self.layer)
        except ValueError as e:
            raise UsageError(f"--cam-layer: {e}") from None
        self.classes = class_names_of(model)

    def class_index(self, name: str | None) -> int | None:
        if name is None:
            return None
        if name not in self.classes:
            raise UsageError(f"--cam-class {name!r} is not a class of this model; its classes: "
                             f"{', '.join(self.classes)}")
        return self.classes.index(name)

    def of_files(self, paths: list[str], class_index: int | None = None, batch_size: int = 32):
        """(path, Cam) for image files, decoded as for prediction (the model's size and resize mode),
        ``batch_size`` at a time."""

        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            yield from zip(chunk, self(np.stack([load_image(p, self.size, self.resize) for p in chunk]), class_index))

    def __call__(self, images: np.ndarray, class_index: int | None = None) -> list[Cam]:
        """Heatmaps of a batch of raw RGB images (N, S, S, 3), each for ``class_index`` or its top class."""
        acts = np.asarray(self.prefix.predict_on_batch(images.astype(np.float32)), dtype=np.float32)
        logits = np.asarray(self.rest.predict_on_batch(acts), dtype=np.float64)
        target = (np.argmax(logits, axis=1) if class_index is None else np.full(len(images), class_index))
        grads = class_gradients(self.rest, acts, target.astype(np.int32))
        weights = grads.mean(axis=(1, 2))  # (N, K): each channel's importance for the class
        maps = np.maximum(np.einsum("nhwk,nk->nhw", acts, weights), 0.0)
        peak = maps.max(axis=(1, 2), keepdims=True)
        maps = np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)
        probs = softmax(logits)
        return [Cam(m, int(t), float(p[t]), self.resize, self.size) for m, t, p in zip(maps, target, probs)]


def class_gradients(rest, acts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """d logit[target] / d acts for each image, on the backend Keras runs on. Images are independent (no batch
    statistics at inference), so the gradient of the summed target logits gives each image's own gradient."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(acts)
        with tf.GradientTape() as tape:
            tape.watch(a)
            score = tf.reduce_sum(tf.gather(rest(a, training=False), target[:, None], batch_dims=1))
        return tape.gradient(score, a).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(a):
            return jnp.sum(jnp.take_along_axis(rest(a, training=False), jnp.asarray(target)[:, None], axis=1))

        return np.asarray(jax.grad(score)(jnp.asarray(acts)))
    if backend == "torch":
        import torch

        a = keras.ops.convert_to_tensor(acts).detach().requires_grad_(True)
        logits = rest(a, training=False)
        logits.gather(1, torch.as_tensor(target, dtype=torch.int64, device=logits.device)[:, None]).sum().backward()
        return a.grad.detach().cpu().numpy()
    raise UsageError(f"Grad-CAM does not support the {backend} backend; use tensorflow, jax or torch")


def heat_on_original(heatmap: np.ndarray, original_size: tuple[int, int], resize: str = "squash",
                     image_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The heatmap (which covers the model's S x S input) at the original image's resolution, over the part of the
    image the input showed (``images.placement``), and a mask of that part (None: all of it). ``image_size``: S,
    where rounding decides a pixel (unknown: exact proportions)."""

    w, h = original_size
    heat = Image.fromarray(heatmap.astype(np.float32), mode="F")
    if resize == "squash":
        return np.asarray(heat.resize((w, h), Image.Resampling.BILINEAR)), None
    side = image_size or 1 << 16
    src, dst = placement(w, h, side, resize)
    rows, cols = heatmap.shape
    box = (dst[0] * cols / side, dst[1] * rows / side, dst[2] * cols / side, dst[3] * rows / side)
    x0, y0 = max(0, round(src[0])), max(0, round(src[1]))
    x1, y1 = max(x0 + 1, min(w, round(src[2]))), max(y0 + 1, min(h, round(src[3])))
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = np.asarray(heat.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box))
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return out, None
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    return out, inside


def overlay(path: str | Path, heatmap, alpha: float = OVERLAY_ALPHA, resize: str = "squash",
            image_size: int | None = None):
    """The heatmap, stretched to the original image's own resolution, coloured (jet) and blended over it.
    ``heatmap``: a ``Cam`` (which knows the model's resize mode and size) or its array, with ``resize`` and
    ``image_size`` saying how the image was made square for the model (``heat_on_original``); what the model did
    not see (``crop``) is dimmed, not coloured."""
    from matplotlib import colormaps

    if isinstance(heatmap, Cam):
        heatmap, resize, image_size = heatmap.heatmap, heatmap.resize, heatmap.image_size
    original = load_original(path)
    stretched, inside = heat_on_original(heatmap, original.size, resize, image_size)
    colours = colormaps["jet"](np.clip(stretched, 0.0, 1.0))[..., :3]
    blended = (1 - alpha) * np.asarray(original, dtype=np.float32) / 255.0 + alpha * colours
    if inside is not None:
        blended = np.where(inside[..., None], blended, OUTSIDE_DIM * np.asarray(original, np.float32) / 255.0)
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def write_cam(path: str | Path, cam: Cam, out_png: Path, out_npy: Path | None = None) -> None:
    """The overlay as a PNG and (for scripts) the raw heatmap as a .npy, both written atomically."""
    buf = io.BytesIO()
    overlay(path, cam).save(buf, format="PNG")
    write_bytes(out_png, buf.getvalue())
    if out_npy is not None:
        raw = io.BytesIO()
        np.save(raw, cam.heatmap)
        write_bytes(out_npy, raw.getvalue())


def cam_files(model, results, out_dir: Path, class_name: str | None = None, layer: str | None = None,
              batch_size: int = 32) -> dict[str, dict]:
    """Grad-CAM overlays (``<stem>.gradcam.png``) and raw heatmaps (``<stem>.gradcam.npy``) in ``out_dir`` for the
    readable images of ``results`` (``predict.Prediction``s). Returns {image path: what was written}."""
    cam = GradCam(model, layer)
    readable = [r.path for r in results if r.error is None]
    names = _unique_stems(readable)
    written: dict[str, dict] = {}
    for path, c in cam.of_files(readable, cam.class_index(class_name), batch_size):
        png, npy = out_dir / f"{names[path]}.gradcam.png", out_dir / f"{names[path]}.gradcam.npy"
        write_cam(path, c, png, npy)
        written[path] = {"overlay": str(png), "heatmap": str(npy), "class": cam.classes[c.class_index],
                         "probability": c.probability, "layer": cam.layer,
                         "positive_evidence": bool(c.heatmap.max() > 0)}
    return written


def _unique_stems(paths: list[str]) -> dict[str, str]:
    """A file name stem per image; images of the same name in different folders get -2, -3..."""
    out, seen = {}, {}
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out[p] = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
    return out
