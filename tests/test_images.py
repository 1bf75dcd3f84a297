"""The one decode function: every odd image kind becomes (size, size, 3) uint8 RGB, or a clear skip reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgg_cli.data.images import MAX_PIXELS, BadImage, is_image_name, load_image

S = 32


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_rgb_png_round_trip_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "a.png"), S)
    assert out.dtype == np.uint8 and out.shape == (S, S, 3)
    np.testing.assert_array_equal(out, arr)  # no resize needed -> exact pixels


def test_resize_to_image_size(tmp_path):
    img = Image.new("RGB", (200, 100), (10, 20, 30))
    out = load_image(_save(img, tmp_path / "wide.jpg", quality=95), S)
    assert out.shape == (S, S, 3)
    assert np.abs(out.astype(int) - [10, 20, 30]).max() <= 3


def test_grayscale_becomes_rgb(tmp_path):
    out = load_image(_save(Image.new("L", (S, S), 77), tmp_path / "g.png"), S)
    assert out.shape == (S, S, 3) and (out == 77).all()


def test_sixteen_bit_grayscale_scaled_to_eight_bit(tmp_path):
    arr = np.full((S, S), 65535, dtype=np.uint16)
    arr[:, : S // 2] = 257 * 100
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    out = load_image(path, S)
    assert out[0, -1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [100, 100, 100]


def test_palette_with_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (S, S), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.paste(1, (0, 0, S // 2, S))  # left half index 1 = blue, right half index 0 = red
    path = _save(img, tmp_path / "p.png", transparency=0)  # index 0 (red) transparent
    out = load_image(path, S)
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[0, -1].tolist() == [255, 255, 255]  # transparent -> white, not red, not black


def test_rgba_alpha_composited_on_white(tmp_path):
    arr = np.zeros((S, S, 4), dtype=np.uint8)
    arr[..., 0] = 200
    arr[:, : S // 2, 3] = 255  # left opaque red, right fully transparent
    out = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"), S)
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[0, -1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (S, S), (0, 255, 255, 0))  # pure red in CMYK
    path = _save(img, tmp_path / "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path, S).astype(int)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # wide: left half red, right half blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=100)
    out = load_image(path, 40).astype(int)
    # Displayed upright, the image is tall: the red (left) half is now at the top, blue at the bottom.
    assert out[2, 20, 0] > 200 and out[2, 20, 2] < 60
    assert out[-3, 20, 2] > 200 and out[-3, 20, 0] < 60


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (S, S), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).is_animated
    out = load_image(path, S).astype(int)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


@pytest.mark.parametrize("ext", [".bmp", ".webp", ".gif", ".jpeg"])
def test_other_formats(tmp_path, ext):
    out = load_image(_save(Image.new("RGB", (S, S), (0, 128, 255)), tmp_path / f"x{ext}"), S)
    assert out.shape == (S, S, 3)


def test_zero_byte_file_rejected(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        load_image(tmp_path / "empty.jpg", S)


def test_text_file_named_jpg_rejected(tmp_path):
    (tmp_path / "notes.jpg").write_text("not really a picture\n")
    with pytest.raises(BadImage, match="not an image"):
        load_image(tmp_path / "notes.jpg", S)


def test_truncated_jpeg_rejected(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadImage, match="truncated"):
        load_image(tmp_path / "cut.jpg", S)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_decompression_bomb_rejected_without_decoding(tmp_path):
    # A tiny file whose header claims 100000 x 100000 pixels (10^10 > MAX_PIXELS).
    side = 100_000
    assert side * side > MAX_PIXELS
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(BadImage, match="too large"):
        load_image(tmp_path / "bomb.png", S)


def test_missing_and_broken_symlink(tmp_path):
    with pytest.raises(BadImage, match="missing"):
        load_image(tmp_path / "nope.png", S)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(BadImage, match="missing"):
        load_image(tmp_path / "dangling.png", S)


def test_extensions_case_insensitive_and_hidden_ignored():
    assert all(is_image_name(n) for n in ["a.JPG", "b.Jpeg", "c.png", "d.BMP", "e.gif", "f.WebP"])
    assert not any(is_image_name(n) for n in [".hidden.jpg", "notes.txt", "a.tiff", "README"])


def test_importing_changes_no_pillow_setting_until_an_image_is_opened():
    """Importing the package leaves the caller's process as it was; the first image opened applies vgg's settings."""
    import subprocess
    import sys

    code = ("from PIL import Image, ImageFile; before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES);"
            "ImageFile.LOAD_TRUNCATED_IMAGES = True;"
            "import vgg_cli.data.images as im;"
            "assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (before[0], True);"
            "import io; buf = io.BytesIO(); Image.new('RGB', (4, 4)).save(buf, 'PNG'); im.decode(buf.getvalue(), 4);"
            "assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (im.MAX_PIXELS, False); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
