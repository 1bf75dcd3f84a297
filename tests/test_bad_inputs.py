"""Every kind of bad or odd input trains through, is reported with its reason, and stays byte-identical; a full
disk fails cleanly with exit 74."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import COLOURS, SIZE, colour_image, make_colour_dataset, run_cli, tree_hashes

FAST = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[8]", "train.batch_size=8",
        "train.epochs=1", "output.tensorboard=false", "data.val_split=0.2",
        "promote.min_accuracy=0"]  # bad inputs, not how good a 1-epoch model is


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(w: int, h: int, broken_crc: bool = False) -> bytes:
    raw = b"".join(b"\x00" + b"\x80" * (3 * w) for _ in range(h))
    idat = zlib.compress(raw)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", idat, crc=0xDEADBEEF if broken_crc else None) + _chunk(b"IEND", b""))


def build_messy_dataset(root: Path) -> dict[str, str]:
    """A dataset with every bad-input kind; returns {relative path: expected reason fragment} of the bad ones."""
    make_colour_dataset(root, per_class=8, seed=2, classes=["red", "blue"])
    red, rng = root / "red", np.random.default_rng(8)
    bad: dict[str, str] = {}
    buf = io.BytesIO()
    colour_image(COLOURS["red"], rng, size=200).save(buf, "JPEG", quality=90)
    (red / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad["red/truncated.jpg"] = "truncated"
    (red / "zero.jpg").write_bytes(b"")
    bad["red/zero.jpg"] = "empty file"
    (red / "notes.jpg").write_text("this is a text file\n")
    bad["red/notes.jpg"] = "not an image"
    (red / "badcrc.png").write_bytes(_png(16, 16, broken_crc=True))
    bad["red/badcrc.png"] = "corrupt PNG: broken PNG file (bad header checksum in b'IDAT')"
    side = 100_000  # a tiny file whose header claims 10^10 pixels
    (red / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                                   + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))
    bad["red/bomb.png"] = "too large"
    (red / "loop_a.jpg").symlink_to(red / "loop_b.jpg")
    (red / "loop_b.jpg").symlink_to(red / "loop_a.jpg")
    bad["red/loop_a.jpg"] = "symlink loop"
    bad["red/loop_b.jpg"] = "symlink loop"
    locked = red / "locked.png"
    colour_image(COLOURS["red"], rng).save(locked)
    os.chmod(locked, 0)
    if os.geteuid() != 0:  # root reads it anyway; everyone else gets a skip
        bad["red/locked.png"] = "permission denied"
    # odd but valid images: they must be used
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(red / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 50000, dtype=np.uint16)).save(red / "sixteen.png")
    frames = [Image.new("RGB", (40, 40), (230, 30, 30)), Image.new("RGB", (40, 40), (0, 0, 255))]
    frames[0].save(red / "anim.gif", save_all=True, append_images=frames[1:])
    img = colour_image(COLOURS["red"], rng)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(red / "rotated.jpg", exif=exif)
    Image.new("L", (40, 40), 90).save(red / "gray.png")
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([255, 255, 255, 220, 30, 30] + [0] * 762)
    pal.save(red / "palette.png", transparency=0)
    colour_image(COLOURS["red"], rng).save(red / "ünïcode name ☃.png")
    (root / "empty").mkdir()
    (root / "only_bad").mkdir()
    (root / "only_bad" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    bad["only_bad/x.jpg"] = ""
    return bad


GOOD_ODD = ["red/cmyk.jpg", "red/sixteen.png", "red/anim.gif", "red/rotated.jpg", "red/gray.png", "red/palette.png",
            "red/ünïcode name ☃.png"]


@pytest.mark.slow
def test_every_bad_input_trains_through_reported_and_untouched(tmp_path):
    data = tmp_path / "messy"
    bad = build_messy_dataset(data)
    before = tree_hashes(data)
    modes = {p: os.lstat(p).st_mode for p in data.rglob("*")}
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", *FAST])
    assert code == 0, err
    manifest = json.loads((Path(out.strip()) / "data.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(bad), reasons
    for path, fragment in bad.items():
        assert fragment in reasons[path], (path, reasons[path])
        assert f"skipped {path}" in err or len(bad) > 20
    used = {f["path"] for f in manifest["files"]}
    assert set(GOOD_ODD) <= used
    assert manifest["classes"] == ["blue", "red"]
    assert {c["class"]: c["reason"] for c in manifest["excluded_classes"]} == {
        "empty": "no usable images", "only_bad": "no usable images"}
    assert tree_hashes(data) == before
    assert {p: os.lstat(p).st_mode for p in data.rglob("*")} == modes  # not even chmod-ed back
    # the dataset doctor sees the same problems and exits 65
    code, out, _ = run_cli(["check", str(data), f"output.dir={runs}", "--json"])
    report = json.loads(out)
    assert code == 65 and {s["path"] for s in report["skipped"]} == set(bad)
    assert tree_hashes(data) == before


@pytest.mark.slow
def test_disk_full_while_writing_leaves_previous_artifacts_and_exits_74(tmp_path, monkeypatch):
    data = make_colour_dataset(tmp_path / "d", per_class=6)
    runs = tmp_path / "runs"
    code, out, _ = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=first", *FAST])
    assert code == 0
    first_summary = (runs / "first" / "summary.json").read_bytes()
    first_production = (runs / ".production.json").read_bytes()

    real_write = Path.write_bytes

    def full_disk(self, data_bytes):
        if self.name.startswith((".summary.json", ".production.json")):
            real_write(self, data_bytes[: len(data_bytes) // 3])  # part of it landed, then the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data_bytes)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=second", *FAST])
    assert code == 74, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: could not write") and "disk full" in line and "summary.json" in line
    assert not (runs / "second" / "summary.json").exists()  # never half a file
    assert (runs / "first" / "summary.json").read_bytes() == first_summary
    assert (runs / ".production.json").read_bytes() == first_production
    assert (runs / "latest").resolve().name == "first"
    assert not [p for p in runs.rglob(".*.tmp*")]  # temp files cleaned up
    monkeypatch.undo()
    code, out, err = run_cli(["train", "--resume", str(runs / "second")])  # space freed: finish it
    assert code in (0, 3), err
    assert json.loads((runs / "second" / "summary.json").read_text())["status"] == "finished"
