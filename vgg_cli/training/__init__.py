"""Training a run: the plan of phases, inputs, callbacks, the per-epoch commit (``checkpoints``), health,
fit, the run summary, the run itself (``run``) and the learning-rate range test (``lrfind``). Knows nothing of
promotion or prediction."""
