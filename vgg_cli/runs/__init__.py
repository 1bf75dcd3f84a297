"""Run directories: one run's files (``rundir.RunDir``, the only code that spells their names), its summary
schema (``summary``) and the runs root (``root.RunsRoot``: lock, latest, production, history, caches, iteration)."""
