"""Decoding one image, the same way for scanning, training and prediction.

``load_image`` applies the EXIF orientation, turns every mode Pillow knows (grayscale, palette, RGBA, CMYK, 16-bit,
float) into 8-bit RGB, and resizes to ``size`` x ``size`` with bilinear filtering. It returns a ``uint8`` array of
shape ``(size, size, 3)``; the model does its own VGG preprocessing, so raw 0-255 RGB is the contract.
"""

from __future__ import annotations

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
    import errno

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


def decode(data: bytes, size: int) -> np.ndarray:
    """Bytes of an image file -> uint8 RGB array (size, size, 3). Raises BadImage with a reason."""
    img = open_image(data)
    if img.format == "PNG":
        _verify_png(data)
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of an animated GIF/WebP
        if img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still >= size: much faster for photos.
            img.draft("RGB", (size, size))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
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


def load_image(path: str | os.PathLike | Path, size: int) -> np.ndarray:
    """Read and decode one image file: the function training and prediction both use."""
    return decode(read_file(path), size)


def load_original(path: str | os.PathLike | Path) -> Image.Image:
    """An image file at its own resolution, upright (EXIF orientation) and RGB, as ``decode`` sees it before the
    resize: what overlays (Grad-CAM) and galleries draw on."""
    img = open_image(read_file(path))
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(f"cannot decode image: {str(e) or type(e).__name__}") from None
