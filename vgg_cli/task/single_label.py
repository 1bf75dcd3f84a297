"""One label per image: the output is a softmax over N classes, the answer the classes ranked by probability, the
scores accuracy, top-5 (more than 5 classes), per-class precision/recall/F1 and the confusion matrix, calibration
one temperature on the logits (``vgg_cli.task.calibration``); champion and challenger are compared on accuracy."""

from __future__ import annotations

import numpy as np

from vgg_cli.task.base import Task
from vgg_cli.task.calibration import calibrate, metrics, reliability
from vgg_cli.task.head import softmax

TOP_K = 5  # top-k accuracy is reported with more classes than this


class SingleLabel(Task):
    name = "single_label"
    promotion_metric = "accuracy"

    def probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return softmax(logits, temperature)

    def calibrate(self, logits: np.ndarray, truth: np.ndarray) -> dict:
        return calibrate(logits, truth)  # temperature scaling, kept when a cross-fit says it helps

    def calibration_metrics(self, probabilities: np.ndarray, truth: np.ndarray) -> dict:
        return metrics(probabilities, truth)

    def reliability(self, probabilities: np.ndarray, truth: np.ndarray) -> list[dict]:
        return reliability(probabilities, truth)

    def ranked(self, probabilities: np.ndarray, k: int) -> list[list[int]]:
        order = np.argsort(-np.asarray(probabilities), axis=-1, kind="stable")[:, :k]
        return order.tolist()

    def scores(self, truth: list[int], ranked: list[list[int]], num_classes: int) -> dict:
        """Accuracy, top-k accuracy, confusion matrix and per-class precision/recall/F1 from true class indices and
        each image's classes ranked by probability. Precision of a class never predicted is 0 (as in scikit-learn's
        default); recall and F1 of a class without images are None and left out of the averages."""
        n = len(truth)
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        for t, r in zip(truth, ranked):
            matrix[t, r[0]] += 1
        support = matrix.sum(axis=1)
        predicted = matrix.sum(axis=0)
        correct = np.diag(matrix)
        per_class = []
        for c in range(num_classes):
            precision = float(correct[c] / predicted[c]) if predicted[c] else 0.0
            recall = float(correct[c] / support[c]) if support[c] else None
            if recall is None:
                f1 = None
            else:
                f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
            per_class.append({"precision": precision, "recall": recall, "f1": f1, "support": int(support[c]),
                              "predicted": int(predicted[c])})
        present = [p for p in per_class if p["support"] > 0]
        weights = np.asarray([p["support"] for p in present], dtype=np.float64)

        def avg(key: str, weighted: bool) -> float:
            values = np.asarray([p[key] for p in present], dtype=np.float64)
            return float(np.average(values, weights=weights) if weighted else values.mean())

        out = {"images": n, "accuracy": float(correct.sum() / n) if n else 0.0, "confusion": matrix,
               "per_class": per_class,
               "macro": {k: avg(k, False) for k in ("precision", "recall", "f1")} if present else None,
               "weighted": {k: avg(k, True) for k in ("precision", "recall", "f1")} if present else None}
        if num_classes > TOP_K:
            out[f"top{TOP_K}_accuracy"] = float(sum(t in r[:TOP_K] for t, r in zip(truth, ranked)) / n) if n else 0.0
        return out


SINGLE_LABEL = SingleLabel()
