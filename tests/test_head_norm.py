"""The head's standardisation (``model.head.norm: standard``, the default): fitted once before the first step from
the training images' pooled features, stored in the model, kept by a resumed run, and the reason a head on a
random backbone's off-scale features learns (issue 37)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TRAIN_ARGS, run_cli


def _pooled_and_stats(run_dir: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the pooled features of the run's training images, computed here from its saved model; the model's
    Standardize weights)."""
    import keras

    from vgg_cli.data.index import TRAIN, index_from_manifest
    from vgg_cli.data.pipeline import load_or_fail
    from vgg_cli.model.load import load_model

    model = load_model(run_dir / "model" / "best.keras")
    pool = next(l for l in model.layers if l.name.startswith("head_") and l.name.endswith("_pool"))
    view = keras.Model(model.inputs, pool.output)
    index = index_from_manifest(json.loads((run_dir / "data.json").read_text()))
    size = model.input_shape[1]
    images = np.stack([load_or_fail(str(index.root_of(e) / e.path), size) for e in index.files if e.split == TRAIN])
    return np.asarray(view.predict(images, verbose=0), np.float64), model.get_layer("head_standardize").get_weights()


def _expected(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, spread = pooled.mean(0), pooled.std(0)
    floor = max(0.1 * float(np.median(spread[spread > 0])), 1e-6)
    return mean, 1.0 / np.maximum(spread, floor)


@pytest.mark.slow
@pytest.mark.parametrize("path, extra", [("features", []), ("images", ["cache.features=off"])])
def test_the_standardisation_is_fitted_on_the_training_images(colour_data, tmp_path, path, extra):
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={colour_data}", f"output.dir={runs}", *TRAIN_ARGS,
                              "train.epochs=2", *extra])
    assert code in (0, 3), err
    run_dir = Path(out.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["input"]["path"] == path
    fitted = summary["input"]["standardize"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["head"]["norm"] == "auto"
    assert json.loads((run_dir / "run.json").read_text())["head_norm"] == "standard"  # every block frozen
    pooled, (mean, inv_std, images) = _pooled_and_stats(run_dir)
    assert fitted["images"] == len(pooled) == int(images) and fitted["features"] == pooled.shape[1] == 512
    want_mean, want_inv = _expected(pooled)
    # the fit and this check see the same images through the same frozen layers (float32 sums in another order)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-4 * np.abs(want_mean).max())
    np.testing.assert_allclose(inv_std, want_inv, rtol=1e-3)
    assert "head standardisation: fitted on" in err
    assert np.abs(want_mean).mean() > 3 * np.median(pooled.std(0))  # a random backbone's features: off-scale
