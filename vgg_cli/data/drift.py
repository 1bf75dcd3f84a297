"""Drift between nights: are tonight's new images drawn from the same distribution as the previous run's
training images? Pure NumPy, deterministic for a seed, bounded in cost.

Two tests, each with a p-value:

- **images**: a handful of cheap statistics per image (mean and spread of each colour channel, sharpness, edge
  density; ``image_stats``), compared between the two samples with the maximum mean discrepancy (MMD) under an RBF
  kernel whose bandwidth is the median pairwise distance (the median heuristic), and a permutation test for its
  p-value (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012);
- **classes**: the new images' class counts against the reference's, the chi-square statistic of the 2 x k table
  with a permutation (multivariate hypergeometric) p-value, so no chi-square table or SciPy is needed;
- **features** (after training, when it ran on cached frozen-prefix features): the same samples' features, averaged
  over positions, by the same MMD test (``mmd_test``; at most ``MAX_FEATURES`` a side).

The night is flagged when the smaller p-value, times the number of tests (Bonferroni), is below ``ALPHA``: a night
drawn from the same images is flagged with probability at most ``ALPHA``.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.01
PERMUTATIONS = 1000  # the smallest p-value a permutation test can give is 1 / (PERMUTATIONS + 1)
MAX_NEW = 300  # images sampled from each side: the kernel matrix is at most (MAX_NEW + MAX_REF) squared
MAX_REF = 300
MAX_FEATURES = 200  # feature entries read a side (an entry can be large: block3 at 224 px is 0.8 MB)
STATS_SIZE = 64  # the side images are decoded at for their statistics
STATS = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "sharpness", "edges")


def image_stats(rgb: np.ndarray) -> np.ndarray:
    """Statistics of one uint8 RGB image (H, W, 3): per-channel mean and standard deviation (0-255), sharpness
    (the standard deviation of the Laplacian of the grey image) and edge density (the share of pixels whose
    gradient exceeds 32 grey levels)."""
    x = rgb.astype(np.float64)
    grey = x @ np.array([0.299, 0.587, 0.114])
    lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
    gx, gy = np.diff(grey, axis=1)[:-1, :], np.diff(grey, axis=0)[:, :-1]
    edges = float(np.mean(np.hypot(gx, gy) > 32.0))
    return np.array([*x.mean(axis=(0, 1)), *x.std(axis=(0, 1)), lap.std(), edges])


def sample(items: list, limit: int, rng: np.random.Generator) -> list:
    """At most ``limit`` of ``items``, drawn without replacement, in their original order."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=limit, replace=False))]


def _standardise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.vstack([x, y]).astype(np.float64)
    std = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Two-sample test of ``x`` (n, d) against ``y`` (m, d): the biased MMD² under an RBF kernel on the standardised
    pooled sample, bandwidth by the median heuristic, p-value by ``permutations`` random relabellings."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"mmd_test needs at least 2 items on each side, got {n} and {m}")
    z = _standardise(x, y)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(n + m, k=1)]
    positive = off[off > 0]
    bandwidth2 = float(np.median(positive)) if positive.size else 1.0
    kernel = np.exp(-d2 / (2 * bandwidth2))
    # MMD² of a labelling is w' K w with w = 1/n on one side and -1/m on the other.
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(w @ kernel @ w)
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, permutations, 200):  # (chunks bound the memory: 200 x (n + m) weights at a time)
        ws = np.stack([rng.permutation(w) for _ in range(min(200, permutations - start))])
        stats = np.einsum("ij,ij->i", ws @ kernel, ws)
        count += int(np.sum(stats >= observed - 1e-12))
    return {"mmd2": observed, "p": (count + 1) / (permutations + 1), "bandwidth": float(np.sqrt(bandwidth2)),
            "permutations": permutations, "new": n, "reference": m}


def _chi2(table: np.ndarray) -> np.ndarray:
    """Chi-square statistics of 2 x k tables stacked along the first axis (rows: new, reference)."""
    cols = table.sum(axis=-2, keepdims=True)
    rows = table.sum(axis=-1, keepdims=True)
    expected = rows * cols / table.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return cells.sum(axis=(-2, -1))


def class_share_test(new: dict[str, int], reference: dict[str, int], permutations: int = PERMUTATIONS,
                     seed: int = 0) -> dict:
    """Do the new images' classes come in the reference's shares? Chi-square of the 2 x k table of counts (classes
    of either side), p-value by drawing the new counts from the pooled counts without replacement."""
    classes = sorted(set(new) | set(reference))
    a = np.array([new.get(c, 0) for c in classes], np.int64)
    b = np.array([reference.get(c, 0) for c in classes], np.int64)
    if a.sum() == 0 or b.sum() == 0 or len(classes) < 2:
        raise ValueError("class_share_test needs images on both sides and at least 2 classes")
    observed = float(_chi2(np.stack([a, b]).astype(np.float64)))
    rng = np.random.default_rng(seed)
    drawn = rng.multivariate_hypergeometric(a + b, int(a.sum()), size=permutations)
    tables = np.stack([drawn, (a + b)[None, :] - drawn], axis=1).astype(np.float64)
    count = int(np.sum(_chi2(tables) >= observed - 1e-9))
    total_new, total_ref = int(a.sum()), int(b.sum())
    shares = {c: {"new": round(int(x) / total_new, 4), "reference": round(int(y) / total_ref, 4)}
              for c, x, y in zip(classes, a, b)}
    return {"chi2": observed, "p": (count + 1) / (permutations + 1), "permutations": permutations, "shares": shares}


def compare(new_stats: np.ndarray, ref_stats: np.ndarray, new_counts: dict[str, int], ref_counts: dict[str, int],
            seed: int = 0, alpha: float = ALPHA) -> dict:
    """Both tests and the verdict: {"flagged", "p" (Bonferroni-adjusted smallest p), "alpha", "images",
    "classes", "stats" (the mean of each statistic on each side)}."""
    tests: dict[str, dict] = {}
    if len(new_stats) >= 2 and len(ref_stats) >= 2:
        tests["images"] = mmd_test(new_stats, ref_stats, seed=seed)
    if len(set(new_counts) | set(ref_counts)) >= 2 and sum(new_counts.values()) and sum(ref_counts.values()):
        tests["classes"] = class_share_test(new_counts, ref_counts, seed=seed + 1)
    if not tests:
        raise ValueError("nothing to compare: too few images on one side")
    out = verdict({"alpha": alpha, **_rounded(tests)})
    if len(new_stats) and len(ref_stats):
        out["stats"] = {name: {"new": round(float(a), 4), "reference": round(float(b), 4)}
                        for name, a, b in zip(STATS, new_stats.mean(axis=0), ref_stats.mean(axis=0))}
    return out


TESTS = ("images", "classes", "features")


def verdict(drift: dict) -> dict:
    """``drift`` with "flagged", "p" and "fired" set from the tests it holds (``TESTS``), Bonferroni over them."""
    tests = {name: drift[name] for name in TESTS if name in drift}
    alpha = drift.get("alpha", ALPHA)
    p = min(1.0, min(t["p"] for t in tests.values()) * len(tests))
    fired = [name for name, t in tests.items() if t["p"] * len(tests) < alpha]
    return {**drift, "flagged": bool(fired), "p": round(p, 6), "alpha": alpha, "fired": fired}


def _rounded(tests: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: round(v, 6) if isinstance(v, float) else v for k, v in t.items()} for name, t in tests.items()}


def describe(drift: dict) -> str:
    """One line: what was compared and the verdict."""
    if not drift.get("tested"):
        return f"drift not tested: {drift.get('reason', 'unknown')}"
    parts = []
    if "images" in drift:
        parts.append(f"image statistics MMD p={drift['images']['p']:.4g}")
    if "classes" in drift:
        parts.append(f"class shares chi-square p={drift['classes']['p']:.4g}")
    if "features" in drift:
        parts.append(f"frozen features MMD p={drift['features']['p']:.4g}")
    verdict = "drifted" if drift.get("flagged") else "no drift"
    which = f" ({drift['baseline']})" if drift.get("baseline") else ""
    return (f"{verdict}: {drift.get('new_images', 0)} new images against {drift.get('reference_images', 0)} of the "
            f"previous run {drift.get('previous_run')}{which}'s training images ({', '.join(parts)}; flagged below "
            f"{drift.get('alpha', ALPHA)} after Bonferroni)")
