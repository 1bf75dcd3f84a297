"""`vgg train` as one job (``lifecycle``: open -> prepare -> fit -> finish -> decide -> apply) and the end of a
trained run (``finish``: calibration, evaluations, the promotion decision and its application, pruning)."""
