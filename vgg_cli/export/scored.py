"""The out-of-distribution score as a second output of an export (SavedModel, ONNX).

``with_score(served, stats)`` is the served model with a second output, ``ood_score`` [N] float32: the run's score
(``vgg_cli.inference.ood``: mahalanobis on the input of ``head_logits``, or energy / max_logit on the logits),
computed in the graph; an image is ``unknown`` when it is above ``stats.threshold`` (in the export's description
and metadata). The export is checked against NumPy's score on the probe images (``check_scores``).
"""

from __future__ import annotations

import numpy as np

from vgg_cli.inference.forward import Forward

SCORE_TOLERANCE = 1e-3  # relative (and absolute, for scores near 0) difference from NumPy's score


def _layer_class():
    import keras
    from keras import ops

    class OODScore(keras.layers.Layer):
        """The score of ``vgg_cli.inference.ood`` in Keras ops (an export-only layer, never saved as .keras)."""

        def __init__(self, method: str, means=None, whiten=None, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.method = method
            self._arrays = None if means is None else (np.asarray(whiten, np.float32),
                                                       np.asarray(means @ whiten, np.float32))

        def call(self, x):  # the statistics are constants of the graph, not variables
            x = ops.cast(x, "float32")
            if self.method == "energy":
                return -ops.logsumexp(x, axis=-1)
            if self.method == "max_logit":
                return -ops.max(x, axis=-1)
            whiten, means = (ops.convert_to_tensor(a) for a in self._arrays)
            fw = ops.matmul(x, whiten)
            d = (ops.sum(fw * fw, axis=-1, keepdims=True) - 2.0 * ops.matmul(fw, ops.transpose(means))
                 + ops.sum(means * means, axis=-1)[None, :])
            return ops.maximum(ops.min(d, axis=-1), 0.0)

        def compute_output_shape(self, input_shape):
            return input_shape[:-1]

    return OODScore


def with_score(served, stats):
    """``served`` (image -> probabilities) with a second output: the out-of-distribution score."""
    import keras

    from vgg_cli.model.build import head_tensors

    features, logits = head_tensors(served)
    source = features if stats.needs_features else logits
    score = _layer_class()(stats.method, stats.means, stats.whiten, name="ood_score")(source)
    return keras.Model(served.inputs, [served.outputs[0], score], name=f"{served.name}_scored")


def expected_scores(served, stats, images: np.ndarray) -> np.ndarray:
    """NumPy's score of ``images`` (what ``vgg predict`` reports), for the check."""

    out = Forward(served, features=stats.needs_features)([images])
    return stats.score(out["logits"], out.get("features"))


def check_scores(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference relative to max(1, |expected|); the export is refused above SCORE_TOLERANCE."""
    got, expected = np.asarray(got, np.float64).reshape(-1), np.asarray(expected, np.float64).reshape(-1)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))


def describe(stats) -> dict:
    return {"method": stats.method, "threshold": stats.threshold, "acceptance": stats.acceptance,
            "meaning": f"float32 [N]: higher = less like the training images; above {stats.threshold:.6g} (the "
                       f"threshold that accepts {stats.acceptance:.0%} of the run's validation split) vgg predict "
                       f"answers unknown"}
