"""Training a run: the plan of phases, inputs, callbacks, the per-epoch commit (``checkpoints``), health,
fit, the run summary, the run itself (``run``) and the learning-rate range test (``lrfind``). Knows nothing of
promotion or prediction."""

# The keys `vgg train --resume` accepts as KEY=VALUE: they move where things are written, never what is trained
# (here, not in a module that loads Keras, so the command line can check them before the framework loads).
RESUME_OVERRIDES = ("output.dir", "cache.dir", "cache.features", "cache.ram_mb", "cache.disk_mb", "cache.images")
