"""Out-of-distribution scores in NumPy, and the statistics a run stores for them (``<model>.ood.npz``).

Every score is "higher = less like the training images":

- ``mahalanobis``: the smallest squared Mahalanobis distance of the head's penultimate features (the input of
  ``head_logits``) to a class mean, with one covariance shared by the classes (Lee et al. 2018), fitted on the run's
  training images; the covariance is shrunk towards its mean variance (``SHRINK``) so it can be inverted with fewer
  images than features;
- ``energy``: ``-logsumexp(logits)`` (Liu et al. 2020);
- ``max_logit``: ``-max(logits)`` (Hendrycks et al. 2022).

The threshold is the ``acceptance`` quantile of the scores of the validation split: that share of in-distribution
images is accepted, the rest and everything beyond it answered ``unknown``. The file also holds a digest of the
``head_logits`` weights it was fitted with: statistics of another model are not used.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgg_cli.fsio import write_bytes
from vgg_cli.runs.rundir import ood_stats_path
from vgg_cli.task.head import LOGITS, head_digest

log = logging.getLogger("vgg")

METHODS = ("mahalanobis", "energy", "max_logit")
SHRINK = 0.1  # covariance shrinkage towards (mean variance) x identity
MAX_FEATURES = 4096  # wider penultimate features (flatten with no dense layer) fall back to energy


def energy(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    m = z.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def max_logit(logits: np.ndarray) -> np.ndarray:
    return -np.asarray(logits, np.float64).max(axis=1)


def fit_gaussian(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (C, D) and a whitening matrix W (D, D) with W W^T = inverse of the shared, shrunk covariance."""
    f, y = np.asarray(features, np.float64), np.asarray(labels)
    means = np.stack([f[y == c].mean(axis=0) if np.any(y == c) else f.mean(axis=0) for c in range(classes)])
    centred = f - means[y]
    cov = centred.T @ centred / max(1, len(f) - 1)
    scale = float(np.trace(cov) / len(cov)) or 1.0
    cov = (1 - SHRINK) * cov + SHRINK * scale * np.eye(len(cov))
    w = np.linalg.cholesky(np.linalg.inv(cov))
    return means, w


def mahalanobis(features: np.ndarray, means: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    fw = np.asarray(features, np.float64) @ whiten
    mw = np.asarray(means, np.float64) @ whiten
    d = (fw ** 2).sum(axis=1)[:, None] - 2 * fw @ mw.T + (mw ** 2).sum(axis=1)[None, :]
    return np.maximum(d.min(axis=1), 0.0)


def weights_digest(model) -> str:
    return head_digest(model.get_layer(LOGITS).get_weights())


@dataclass
class OODStats:
    """What a run stores to score images: the method, its threshold and (mahalanobis) the Gaussian."""
    method: str
    threshold: float
    acceptance: float  # the share of the validation split accepted, asked for
    digest: str  # of the head_logits weights fitted with
    means: np.ndarray | None = None
    whiten: np.ndarray | None = None

    @property
    def needs_features(self) -> bool:
        return self.method == "mahalanobis"

    def score(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        if self.method == "mahalanobis":
            return mahalanobis(features, self.means, self.whiten)
        return energy(logits) if self.method == "energy" else max_logit(logits)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        arrays = {"method": np.array(self.method), "threshold": np.array(self.threshold),
                  "acceptance": np.array(self.acceptance), "digest": np.array(self.digest)}
        if self.means is not None:
            arrays.update(means=self.means.astype(np.float32), whiten=self.whiten.astype(np.float32))
        np.savez(buf, **arrays)
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "OODStats":
        with np.load(path, allow_pickle=False) as z:
            means = z["means"].astype(np.float64) if "means" in z.files else None
            whiten = z["whiten"].astype(np.float64) if "whiten" in z.files else None
            return cls(str(z["method"]), float(z["threshold"]), float(z["acceptance"]), str(z["digest"]),
                       means, whiten)


def threshold_for(scores: np.ndarray, acceptance: float) -> float:
    """The score at or below which ``acceptance`` of these (in-distribution) images lie."""
    return float(np.quantile(np.asarray(scores, np.float64), acceptance, method="inverted_cdf"))


def stats_for(model, model_file: Path, digest: str | None = None) -> OODStats | None:
    """The statistics stored beside ``model_file`` for this very model, or None (an older run, statistics of
    another model, or a damaged file: said once on the log). ``digest``: the model's ``weights_digest``, when the
    caller has it without Keras (``numpy_engine``)."""

    path = ood_stats_path(model_file)
    if not path.is_file():
        return None
    try:
        stats = OODStats.load(path)
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s cannot be read (%s): no out-of-distribution score", path, e)
        return None
    if stats.digest != (digest or weights_digest(model)):
        log.warning("%s was fitted for another model (its head_logits weights differ): no out-of-distribution "
                    "score", path)
        return None
    return stats


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an out-of-distribution image scores higher than an in-distribution one (ties half)."""
    a, b = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    both = np.concatenate([a, b])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        tie = both == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))
