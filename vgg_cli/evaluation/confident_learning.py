"""Suspected label errors: confident learning (Northcutt, Jiang and Chuang, 2021) on out-of-sample probabilities.

cleanlab's ``find_label_issues(filter_by="prune_by_noise_rate")`` is the reference; its core is short enough to
keep here in numpy (README, "Why these libraries"):

1. a threshold per class: the mean probability of that class over the images labelled with it;
2. the confident joint: an image labelled *i* counts for class *j* when p_j reaches j's threshold (the likeliest
   such class when several do);
3. calibrated so each row sums to its class's image count, its off-diagonal cell (i, j) estimates how many images
   labelled i are really j; that many of them, those with the largest margin p_j - p_i, are suspects;
4. suspects are ranked by the probability of their given label (self-confidence), lowest first.

Beyond the reference, an image whose label gets less than 2 % while another class is likelier is a suspect too
(``find_suspects``): on a small dataset the thresholds of step 1 are high and step 2 misses exactly the blatant
cases. On the digit scans it raised recall from 0.85 to 0.90 at the same precision (docs/data-trust.md).

Probabilities must be out-of-sample (``suspects`` makes them): a k-fold logistic regression on the features of the
frozen leading conv blocks (they never saw a label; with no augmentation they are the ones ``cache.features``
stored) predicts every image from the folds it was not fitted on; without frozen blocks, the trained model's
probabilities on the validation split (it never trained on them) are used, and the training images not examined.
"""

from __future__ import annotations

import logging

import numpy as np

from vgg_cli.task.head import softmax

log = logging.getLogger("vgg")
FOLDS = 5
MIN_SELF_CONFIDENCE = 0.02  # below this for its label (and another class likelier), an image is a suspect anyway


def confident_learning(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the suspected label errors among images with given ``labels`` (n,) and out-of-sample ``probs``
    (n, k), most suspect first."""
    labels = np.asarray(labels, dtype=np.int64)
    n, k = probs.shape
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else 1.0 for j in range(k)])
    above = probs >= thresholds - 1e-9
    seen = above.any(axis=1)
    guess = np.where(above, probs, -np.inf).argmax(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[seen], guess[seen]), 1)
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]
    suspect = np.zeros(n, dtype=bool)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        budget = max(0, len(members) - 1)  # a class keeps at least one image
        for j in np.argsort(-calibrated[i]):
            m = min(int(round(calibrated[i, j])), budget)
            if j == i or m <= 0:
                continue
            margin = probs[members, j] - probs[members, i]
            chosen = members[np.argsort(-margin, kind="stable")[:m]]
            chosen = chosen[probs[chosen, j] > probs[chosen, i]]  # (and the model prefers j over the label)
            suspect[chosen] = True
            budget -= len(chosen)
    found = np.flatnonzero(suspect)
    return found[np.argsort(probs[found, labels[found]], kind="stable")]


def find_suspects(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``confident_learning``'s suspects and, beyond them, every image given less than MIN_SELF_CONFIDENCE for its
    label while another class is likelier (on small data the per-class thresholds are high and the confident joint
    misses the blatant cases); most suspect first."""
    labels = np.asarray(labels, dtype=np.int64)
    own = probs[np.arange(len(labels)), labels]
    blatant = np.flatnonzero((own < MIN_SELF_CONFIDENCE) & (probs.argmax(axis=1) != labels))
    found = np.union1d(confident_learning(labels, probs), blatant)
    return found[np.argsort(own[found], kind="stable")]


def _top_singular(x: np.ndarray, steps: int = 30) -> float:
    """The largest singular value of ``x`` (power iteration; a little over it, to be safe)."""
    v = np.random.default_rng(0).normal(size=x.shape[1])
    for _ in range(steps):
        v = x.T @ (x @ v)
        v /= np.linalg.norm(v) + 1e-12
    return 1.05 * float(np.linalg.norm(x @ v))


def _fit_softmax(x: np.ndarray, y: np.ndarray, k: int, steps: int = 300, l2: float = 0.1,
                 dual: bool | None = None) -> np.ndarray:
    """Multinomial logistic regression with an L2 penalty (full-batch gradient descent with momentum, its step
    1/L from the largest singular value of ``x``, so it converges on any features): weights with a bias row.

    With more features than images (8192 flat block-5 features of a few hundred images; ``dual`` None: chosen so)
    it descends on dual coefficients: from zero, every gradient and so every iterate is ``x^T c`` (``x`` with its
    bias column), and ``x @ x^T c = G c`` for the n-by-n Gram matrix ``G``, so the same descent on ``c`` gives the
    same weights, without a pass over every feature per step or a decomposition of ``x``."""
    x = np.hstack([x, np.ones((len(x), 1))])
    n, onehot = len(x), np.eye(k)[y]
    if x.shape[1] > n if dual is None else dual:
        gram = x @ x.T
        lipschitz = 0.5 * 1.05 ** 2 * float(np.linalg.eigvalsh(gram)[-1]) / n + l2
        c, velocity = np.zeros((n, k)), np.zeros((n, k))
        for _ in range(steps):
            velocity = 0.9 * velocity - ((softmax(gram @ c) - onehot) / n + l2 * c) / lipschitz
            c += velocity
        return x.T @ c
    lipschitz = 0.5 * _top_singular(x) ** 2 / n + l2
    w, velocity = np.zeros((x.shape[1], k)), np.zeros((x.shape[1], k))
    for _ in range(steps):
        grad = x.T @ (softmax(x @ w) - onehot) / n + l2 * w
        velocity = 0.9 * velocity - grad / lipschitz
        w += velocity
    return w


def out_of_fold(features: np.ndarray, labels: np.ndarray, k: int, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-sample probabilities of every row: each fold predicted by a model fitted on the other folds."""
    x = features.reshape(len(features), -1).astype(np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    labels = np.asarray(labels, dtype=np.int64)
    fold = np.empty(len(x), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in range(k):  # stratified: each class spread over the folds
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    out = np.zeros((len(x), k))
    for f in range(folds):
        test = fold == f
        if not test.any() or test.all():
            continue
        w = _fit_softmax(x[~test], labels[~test], k)
        out[test] = softmax(np.hstack([x[test], np.ones((test.sum(), 1))]) @ w)
    return out
