"""One forward pass that gives what prediction needs: the model's probabilities (calibrated by its temperature),
its logits, and the head's penultimate features when an out-of-distribution score needs them."""

from __future__ import annotations

import numpy as np

from vgg_cli.task import SINGLE_LABEL


class Forward:
    """``Forward(model, features, calibrated)(batch, views)``: arrays of a uint8 batch, each averaged over the
    test-time-augmentation ``views`` (``predict.tta_views``): ``probabilities`` (the model's own output; with
    ``calibrated=False`` the task's ``activation`` of the logits, temperature 1), ``logits`` and (``features``)
    ``features``, the input of ``head_logits``. One model call per view."""

    def __init__(self, model, features: bool = False, calibrated: bool = True, activation=SINGLE_LABEL.probabilities):
        import keras

        from vgg_cli.model.build import head_tensors

        self.model, self.calibrated, self.features, self.activation = model, calibrated, features, activation
        try:
            inputs, logits = head_tensors(model)
        except ValueError:  # not a vgg model: its output only
            self.view = None
            return
        outputs = [model.outputs[0], logits] + ([inputs] if features else [])
        self.view = keras.Model(model.inputs, outputs, name=f"{model.name}_forward")

    def __call__(self, views: list[np.ndarray]) -> dict[str, np.ndarray]:
        if self.view is None:
            return {"probabilities": np.mean([np.asarray(self.model.predict_on_batch(v)) for v in views], axis=0)}
        got = [[np.asarray(x) for x in self.view.predict_on_batch(np.ascontiguousarray(v))] for v in views]
        logits = [g[1].astype(np.float32) for g in got]
        if self.calibrated:
            probs = [g[0] for g in got]
        else:
            probs = [self.activation(z).astype(np.float32) for z in logits]
        out = {"probabilities": np.mean(probs, axis=0), "logits": np.mean(logits, axis=0)}
        if self.features:
            out["features"] = np.mean([g[2].astype(np.float32) for g in got], axis=0)
        return out
