"""Exact and near-duplicate images: a per-file print made when the scan checks a file, and the pairing.

The print of an image is made from the array the check decodes anyway (``checks.check_one``), so it costs no extra
read and is cached with the check (``ScanCache``): an unchanged night pairs cached prints and opens no image.

- a **perceptual hash** (64 bits, pHash: the signs of the 8x8 lowest frequencies of the 2-D DCT of a 32x32
  greyscale copy, against their median) finds the candidates: re-saved, resized and re-compressed copies change a
  few bits at most, other pictures about half of them;
- a **thumbnail** (16x16 greyscale, 256 bytes) verifies them: a candidate pair is a near-duplicate when the
  thumbnails' correlation is at least ``MIN_CORRELATION``. Scans of the same handwritten digit share a hash as
  often as not; their thumbnails still differ (docs/data-trust.md has the figures).

Candidates are found by bands of the hash (8 bands of 8 bits: two hashes within ``MAX_HAMMING`` bits share at least
one band, by pigeonhole), so pairing compares images that share a band, never all pairs.
"""

from __future__ import annotations

import base64
from collections import defaultdict

import numpy as np
from PIL import Image

HASH_SIDE = 32  # the greyscale copy the DCT is taken of
THUMB_SIDE = 16  # the verification thumbnail
BANDS = 8  # the 64-bit hash as 8 bands of 8 bits
MAX_HAMMING = BANDS - 1  # candidates: hashes at most this many bits apart (all share a band)
MIN_CORRELATION = 0.995  # near-duplicate: thumbnails at least this correlated
CHUNK = 2048  # rows of a band's bucket compared at once (bounds memory)


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_matrix(HASH_SIDE)


def _shrink(grey: np.ndarray, side: int) -> np.ndarray:
    """A square greyscale float array averaged down (box filter) to ``side`` x ``side``."""

    return np.asarray(Image.fromarray(grey.astype(np.float32), "F").resize((side, side), Image.Resampling.BOX),
                      dtype=np.float64)


def image_print(rgb: np.ndarray) -> tuple[str, str]:
    """(perceptual hash as 16 hex digits, thumbnail as base64) of a decoded uint8 RGB array."""
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    low = (_DCT @ _shrink(grey, HASH_SIDE) @ _DCT.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    value = int("".join("1" if b else "0" for b in bits), 2)
    thumb = np.clip(np.rint(_shrink(grey, THUMB_SIDE)), 0, 255).astype(np.uint8)
    return f"{value:016x}", base64.b64encode(thumb.tobytes()).decode("ascii")


def _thumbs(thumbs: list[str]) -> np.ndarray:
    """The thumbnails as rows, centred and scaled to unit length (a flat one stays zero: it pairs only exactly)."""
    t = np.frombuffer(b"".join(base64.b64decode(s) for s in thumbs), dtype=np.uint8)
    t = t.reshape(len(thumbs), THUMB_SIDE * THUMB_SIDE).astype(np.float64)
    t -= t.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    return np.divide(t, norm, out=np.zeros_like(t), where=norm > 1e-9)


def _candidates(hashes: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (i < j) whose hashes share a band and are at most MAX_HAMMING bits apart."""
    out: set[tuple[int, int]] = set()
    for band in range(BANDS):
        keys = (hashes >> np.uint64(8 * band)) & np.uint64(0xFF)
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, k in enumerate(keys.tolist()):
            buckets[k].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            m = np.asarray(members)
            for start in range(0, len(m), CHUNK):
                rows = m[start:start + CHUNK]
                dist = np.bitwise_count(hashes[rows][:, None] ^ hashes[m][None, :])
                a, b = np.nonzero(dist <= MAX_HAMMING)
                out.update((int(rows[x]), int(m[y])) for x, y in zip(a, b) if rows[x] < m[y])
    return out


def near_pairs(prints: list[tuple[str, str]], sha1s: list[str]) -> list[tuple[int, int, str]]:
    """(i, j, kind) for every duplicate pair among images with these prints and content hashes; kind is "exact"
    (same bytes) or "near"."""
    if len(prints) < 2:
        return []
    hashes = np.array([int(h, 16) for h, _ in prints], dtype=np.uint64)
    pairs = sorted(_candidates(hashes))
    exact = defaultdict(list)
    for i, s in enumerate(sha1s):
        exact[s].append(i)
    same = {(g[a], g[b]) for g in exact.values() for a in range(len(g)) for b in range(a + 1, len(g))}
    out = [(i, j, "exact") for i, j in sorted(same)]
    rest = [(i, j) for i, j in pairs if (i, j) not in same]
    if rest:
        t = _thumbs([t for _, t in prints])
        i, j = np.array(rest).T
        corr = np.einsum("ij,ij->i", t[i], t[j])
        out += [(int(a), int(b), "near") for a, b, c in zip(i, j, corr) if c >= MIN_CORRELATION]
    return out


def groups_of(n: int, pairs: list[tuple[int, int, str]]) -> list[list[int]]:
    """Connected groups (each sorted, of two or more) of ``n`` items joined by ``pairs`` (union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])
