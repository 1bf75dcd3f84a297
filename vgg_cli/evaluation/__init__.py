"""Scoring a run on labelled images: ``evaluate`` and the galleries (``gallery``)."""
