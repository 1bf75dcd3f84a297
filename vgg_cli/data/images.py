"""Decoding one image, the same way for scanning, training and prediction.

``load_image`` applies the EXIF orientation, turns every mode Pillow knows (grayscale, palette, RGBA, CMYK, 16-bit,
float) into 8-bit RGB, and makes it ``size`` x ``size`` with bilinear filtering, in one of the ``RESIZE_MODES``
(``data.resize``; the model records it, see ``vgg_cli.model.load.resize_of``):

- ``squash``: both sides resized to ``size`` (the aspect ratio changes);
- ``crop``: resized so the short side is ``size``, then the centre square (Ultralytics classify's centre crop);
- ``pad``: resized so the long side is ``size``, then centred on a black (0) square.

It returns a ``uint8`` array of shape ``(size, size, 3)``; the model does its own VGG preprocessing, so raw 0-255 RGB
is the contract.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Extensions we read, lowercase; matched case-insensitively. Reused in messages.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Larger than any sane photo (~ 16k x 12k): above this a file is treated as a decompression bomb.
MAX_PIXELS = 200_000_000
# Changes whenever ``decode`` could produce different pixels for the same file (it keys the feature cache).
DECODER_VERSION = f"pillow-{PIL.__version__}-exif-rgb-draft-bilinear-1"
# Files larger than this are not read at all.
MAX_FILE_BYTES = 512 * 1024 * 1024
# How a non-square image becomes square (``data.resize``); the first is the default, and what a model that does not
# record one was trained with.
RESIZE_MODES = ("squash", "crop", "pad")
# ``crop`` of an image longer than this many times its short side first keeps only the centre part of that length:
# resizing all of it first (short side -> size) could need gigabytes; the centre square is in that part either way.
MAX_CROP_RATIO = 4



def _configure_pillow() -> None:
    """Pillow's process-wide settings that decoding relies on, applied when an image is first opened (not at
    import: importing vgg_cli changes nothing in the caller's process). We check sizes ourselves (MAX_PIXELS),
    before decoding, so Pillow's own bomb warning would only be noise; truncated files must fail, not decode
    half grey."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason recorded in the manifest."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_file(path: str | os.PathLike) -> bytes:
    """Read a whole file, with reasons a person can act on."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise BadImage(_os_reason(e)) from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise BadImage(f"file too large ({size} bytes > {MAX_FILE_BYTES})")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImage(_os_reason(e)) from None


def _os_reason(e: OSError) -> str:

    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.EACCES:
        return "permission denied"
    if e.errno == errno.ENOENT:
        return "missing (broken symlink?)"
    return f"cannot read: {e.strerror or e}"


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data (PNG 16-bit opens as I or I;16) is scaled down; 8-bit-range data is kept.
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_image(data: bytes) -> Image.Image:
    """Open from bytes and check the header; raises BadImage with a reason."""
    if Image.MAX_IMAGE_PIXELS != MAX_PIXELS or ImageFile.LOAD_TRUNCATED_IMAGES:
        _configure_pillow()
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadImage(f"image too large (more than {MAX_PIXELS} pixels): possible decompression bomb") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow cannot identify the format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"corrupt image header: {e}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(f"empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise BadImage(f"image too large ({w}x{h} > {MAX_PIXELS} pixels): possible decompression bomb")
    return img


def _verify_png(data: bytes) -> None:
    """Pillow's ``load()`` checks the CRC of header chunks but not of the pixel data (IDAT): a corrupted PNG can
    decode to wrong pixels without an error. Pillow's ``verify()`` checks every chunk's CRC (on its own file
    object: a verified image cannot be loaded)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e) or type(e).__name__
        if "truncated" in text.lower():
            raise BadImage(f"truncated image: {text}") from None
        raise BadImage(f"corrupt PNG: {text}") from None


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def resized_size(w: int, h: int, size: int, resize: str = "squash") -> tuple[int, int]:
    """The size a ``w`` x ``h`` image is resized to before it is cropped (``crop``) or padded (``pad``) to ``size``
    x ``size``: for ``crop`` the short side becomes ``size``, for ``pad`` the long side."""
    if check_resize(resize) == "squash" or w == h:
        return size, size
    short, long_ = min(w, h), max(w, h)
    if resize == "crop":
        new_short, new_long = size, max(size, round(long_ * size / short))
    else:
        new_short, new_long = min(size, max(1, round(short * size / long_))), size
    return (new_long, new_short) if w > h else (new_short, new_long)


def placement(w: int, h: int, size: int, resize: str = "squash") -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Where a ``w`` x ``h`` image goes in the ``size`` x ``size`` input: (the box of the original it shows, in the
    original's pixels; the box of the input it fills, in input pixels). ``squash``: all of it, all of it; ``crop``:
    the centre region, all of the input; ``pad``: all of it, the centre of the input (the rest is black)."""
    nw, nh = resized_size(w, h, size, resize)
    if resize == "crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        sx, sy = w / nw, h / nh
        return (left * sx, top * sy, (left + size) * sx, (top + size) * sy), (0, 0, size, size)
    if resize == "pad":
        left, top = (size - nw) // 2, (size - nh) // 2
        return (0.0, 0.0, float(w), float(h)), (left, top, left + nw, top + nh)
    return (0.0, 0.0, float(w), float(h)), (0, 0, size, size)


def _draft_size(w: int, h: int, size: int, resize: str) -> tuple[int, int]:
    """What JPEG draft mode must keep at least: libjpeg decodes at 1/2, 1/4 or 1/8 scale only while both sides stay
    >= these. Squash and crop need both sides >= ``size`` (crop's long side then follows from the ratio); pad
    needs only the long side >= ``size`` and the short side >= its resized length."""
    if resize == "pad":
        return resized_size(w, h, size, resize)
    return size, size


def to_square(img: Image.Image, size: int, resize: str = "squash") -> Image.Image:
    """An upright RGB image -> ``size`` x ``size`` in the ``resize`` mode (bilinear)."""
    w, h = img.size
    if resize == "crop" and max(w, h) > MAX_CROP_RATIO * min(w, h):
        # a 1 x 100000 strip would resize to size x 100000*size: keep only its centre part first (bounded memory)
        keep = MAX_CROP_RATIO * min(w, h)
        left, top = (w - keep) // 2 if w > h else 0, (h - keep) // 2 if h > w else 0
        img = img.crop((left, top, left + min(w, keep), top + min(h, keep)))
        w, h = img.size
    nw, nh = resized_size(w, h, size, resize)
    if img.size != (nw, nh):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if (nw, nh) == (size, size):
        return img
    if resize == "crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    square = Image.new("RGB", (size, size), (0, 0, 0))
    square.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return square


def decode(data: bytes, size: int, resize: str = "squash") -> np.ndarray:
    """Bytes of an image file -> uint8 RGB array (size, size, 3), made square as ``resize`` says (``RESIZE_MODES``).
    Raises BadImage with a reason."""
    check_resize(resize)
    img = open_image(data)
    if img.format == "PNG":
        _verify_png(data)
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of an animated GIF/WebP
        if img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves the mode the pixels it needs: much
            # faster for photos. (Before the EXIF rotation: a quarter turn swaps both sizes alike.)
            img.draft("RGB", _draft_size(*img.size, size, resize))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if resize == "squash":
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        else:
            img = to_square(img, size, resize)
        arr = np.asarray(img, dtype=np.uint8)
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        text = str(e) or type(e).__name__
        if "truncated" in text.lower():
            raise BadImage(f"truncated image: {text}") from None
        raise BadImage(f"cannot decode image: {text}") from None
    if arr.shape != (size, size, 3):
        raise BadImage(f"decoded to an unexpected shape {arr.shape}")
    return arr


def load_image(path: str | os.PathLike | Path, size: int, resize: str = "squash") -> np.ndarray:
    """Read and decode one image file: the function training and prediction both use."""
    return decode(read_file(path), size, resize)


def load_original(path: str | os.PathLike | Path) -> Image.Image:
    """An image file at its own resolution, upright (EXIF orientation) and RGB, as ``decode`` sees it before the
    resize: what overlays (Grad-CAM) and galleries draw on (``placement`` says where the model's input lies on it)."""
    img = open_image(read_file(path))
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(f"cannot decode image: {str(e) or type(e).__name__}") from None
