"""Calibration of one label per image, in NumPy: the metrics (ECE, MCE, NLL, Brier), temperature scaling of the
softmax and its honest figure (``SingleLabel.calibrate``, ``SingleLabel.calibration_metrics``).

Definitions (as in Guo et al. 2017, "On Calibration of Modern Neural Networks"):

- ECE: the images are put in ``BINS`` equal-width bins by their top probability (confidence); ECE is the sum over
  bins of (share of images in the bin) x |accuracy in the bin - mean confidence in the bin|. MCE: the largest of
  those gaps over the non-empty bins. A confidence of exactly 0 goes in the first bin, 1 in the last.
- NLL: the mean of -ln p(true class) (p clipped at 1e-12). Brier: the mean over images of the sum over classes of
  (p_k - [k is the true class])^2 (0 is perfect, 2 the worst).

Temperature scaling divides the logits by one scalar T > 0 fitted to minimise the NLL (convex in 1/T: a golden
section search on 1/T finds it). The figure that says whether it helped must come from images it was not fitted
on: ``cross_fit`` fits on one half of the validation split and scores the other half, both ways round.
No library: each of these is a few lines, and scikit-learn has no ECE (netcal and torchmetrics would bring PyTorch
or more for the same twenty lines).
"""

from __future__ import annotations

import numpy as np

from vgg_cli.task.head import softmax

BINS = 15
T_RANGE = (0.05, 20.0)  # the temperatures the fit may choose
MIN_IMAGES = 20  # fewer validation images than this: no temperature is fitted (it would fit noise)


def nll(probs: np.ndarray, truth: np.ndarray) -> float:
    p = np.asarray(probs, np.float64)[np.arange(len(truth)), np.asarray(truth)]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def brier(probs: np.ndarray, truth: np.ndarray) -> float:
    p = np.asarray(probs, np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(truth)), np.asarray(truth)] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin: its edges, image count, mean confidence and accuracy (None when empty)."""
    p = np.asarray(probs, np.float64)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == np.asarray(truth))
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "images": n,
                    "confidence": float(confidence[inside].mean()) if n else None,
                    "accuracy": float(correct[inside].mean()) if n else None})
    return out


def ece_mce(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> tuple[float, float]:
    rows = [r for r in reliability(probs, truth, bins) if r["images"]]
    total = sum(r["images"] for r in rows)
    gaps = [abs(r["accuracy"] - r["confidence"]) for r in rows]
    if not total:
        return 0.0, 0.0
    return float(sum(r["images"] * g for r, g in zip(rows, gaps)) / total), float(max(gaps))


def metrics(probs: np.ndarray, truth: np.ndarray) -> dict:
    """ECE, MCE (15 bins), NLL, Brier and accuracy of probabilities against true class indices."""
    ece, mce = ece_mce(probs, truth)
    p = np.asarray(probs)
    return {"ece": ece, "mce": mce, "nll": nll(p, truth), "brier": brier(p, truth),
            "accuracy": float(np.mean(p.argmax(axis=1) == np.asarray(truth))), "images": int(len(truth))}


def fit_temperature(logits: np.ndarray, truth: np.ndarray, iterations: int = 60) -> float:
    """The T in ``T_RANGE`` minimising the NLL of softmax(logits / T): golden-section search on 1/T. The targets
    keep 1/(n+2) of their weight off the true class (Laplace's rule of succession: n images without a mistake say
    the accuracy is about (n+1)/(n+2), not 1), so a split without mistakes does not send T to 0."""
    z, y = np.asarray(logits, np.float64), np.asarray(truth)
    n, k = z.shape
    eps = 1.0 / (n + 2)
    target = np.full_like(z, eps / max(1, k - 1))
    target[np.arange(n), y] = 1.0 - eps

    def loss(beta: float) -> float:
        return float(-np.mean(np.sum(target * np.log(np.clip(softmax(z * beta), 1e-300, 1.0)), axis=1)))

    lo, hi = 1.0 / T_RANGE[1], 1.0 / T_RANGE[0]
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(1.0 / ((lo + hi) / 2.0))


def halves(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the images, each class split alternately (in the given order): indices of A and of B."""
    y = np.asarray(truth)
    a, b = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        a += list(idx[0::2])
        b += list(idx[1::2])
    return np.sort(np.asarray(a, int)), np.sort(np.asarray(b, int))


def cross_fit(logits: np.ndarray, truth: np.ndarray) -> dict:
    """The honest figure: T fitted on half A scores half B and vice versa; the metrics of those out-of-half
    probabilities over all images, against the uncalibrated ones (``before``). ``helped``: the NLL fell."""
    z, y = np.asarray(logits, np.float64), np.asarray(truth)
    a, b = halves(y)
    calibrated = np.empty_like(z)
    temps = []
    for fit_on, score_on in ((a, b), (b, a)):
        t = fit_temperature(z[fit_on], y[fit_on])
        temps.append(t)
        calibrated[score_on] = softmax(z[score_on], t)
    before, after = metrics(softmax(z), y), metrics(calibrated, y)
    return {"before": before, "after": after, "half_temperatures": temps, "helped": after["nll"] < before["nll"]}


def calibrate(logits: np.ndarray, truth: np.ndarray) -> dict:
    """The temperature to store, and why: fitted on every image when the cross-fit says it lowers the NLL of
    images it was not fitted on, else 1.0 (the model is as calibrated as temperature scaling can make it)."""
    n = len(truth)
    if n < MIN_IMAGES or len(np.unique(truth)) < 2:
        return {"temperature": 1.0, "fitted": False,
                "reason": f"{n} validation image(s) of {len(np.unique(truth))} class(es): too few to fit "
                          f"(at least {MIN_IMAGES} of 2 classes)"}
    honest = cross_fit(logits, truth)
    t = fit_temperature(logits, truth)
    kept = t if honest["helped"] else 1.0
    reason = ("the cross-fit over halves of the validation split lowered the NLL" if honest["helped"] else
              "the cross-fit over halves of the validation split did not lower the NLL: left at 1")
    return {"temperature": kept, "fitted": True, "fitted_temperature": t, "reason": reason,
            "cross_fit": honest, "in_sample": metrics(softmax(logits, kept), truth)}
