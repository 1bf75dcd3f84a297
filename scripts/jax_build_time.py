#!/usr/bin/env python3
"""Model build and model load on a Keras backend (default JAX): vgg's way against Keras' own, in fresh processes.

    python scripts/jax_build_time.py                    # JAX, VGG16 at 224 px
    python scripts/jax_build_time.py --size 32 --backend tensorflow

Each measurement is its own process (no program compiled by an earlier one in memory; JAX's persistent compile
cache off), so it is what every run paid before its first batch:

  build   build_model(weights=none): vgg's (backbone built with host-side initial values, He init from NumPy)
          against the same function with Keras' initializers and Keras' HeNormal draws (what vgg did before)
  load    vgg: model.load_model(best.keras); Keras: keras.saving.load_model of the same file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, logging, os, sys, time
what, how, size, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
compiled = []
if os.environ["KERAS_BACKEND"] == "jax":
    import jax
    jax.config.update("jax_log_compiles", True)
    class Grab(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling "):
                compiled.append(record.getMessage())
    logging.getLogger("jax").addHandler(Grab())
    logging.getLogger("jax").setLevel(logging.DEBUG)
import keras, numpy as np
from vgg_cli.config.schema import load_config
from vgg_cli.model import build as m; from vgg_cli.model import load as model_io; from vgg_cli.model import weights
keras.utils.set_random_seed(0)
cfg = load_config(None, ["model.weights=none", f"data.image_size={size}"]).model
keras.ops.convert_to_tensor(np.zeros(1))  # the backend is up before the clock starts
t = time.perf_counter()
if what == "build" and how == "keras":  # the same build_model, as it was: Keras' initializers, Keras' He draws
    import contextlib
    m.keras_fixes.host_initializers = contextlib.nullcontext
    def keras_he(backbone):
        init = keras.initializers.HeNormal()
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.Conv2D):
                layer.kernel.assign(init(layer.kernel.shape))
                layer.bias.assign(keras.ops.zeros(layer.bias.shape))
    weights.he_initialise = keras_he
if what == "build":
    model, _ = m.build_model(cfg, size, ["a", "b", "c"])
elif what == "save":
    model, _ = m.build_model(cfg, size, ["a", "b", "c"])
    model.save(path)
elif how == "vgg":
    model_io.load_model(path)
else:
    keras.saving.load_model(path, compile=False, safe_mode=True)
seconds = time.perf_counter() - t
random = [c for c in compiled if any(k in c for k in ("uniform", "normal", "threefry", "random"))]
print("RESULT " + json.dumps({"seconds": seconds, "compiled": len(compiled), "random_programs": len(random)}))
'''


def measure(what: str, how: str, size: int, path: Path, backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    p = subprocess.run([sys.executable, "-c", CHILD, what, how, str(size), str(path)], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{what}/{how} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.split("RESULT ")[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="jax", choices=["jax", "tensorflow", "torch"])
    ap.add_argument("--size", type=int, default=224, help="image size (default 224)")
    ap.add_argument("--repeat", type=int, default=2, help="measurements of each (default 2; the table shows each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        measure("save", "vgg", args.size, path, args.backend)
        print(f"| {args.backend}, VGG16 at {args.size} px | seconds | programs compiled | of them random-number |")
        print("|---|---:|---:|---:|")
        for what, label in (("build", "build (weights: none)"), ("load", "load a saved model")):
            for how, who in (("keras", "Keras' own initializers"), ("vgg", "vgg")):
                for _ in range(args.repeat):
                    r = measure(what, how, args.size, path, args.backend)
                    print(f"| {label}: {who} | {r['seconds']:.2f} | {r['compiled']} | {r['random_programs']} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
