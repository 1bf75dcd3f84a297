"""What training did (``TrainResult``) and what the end of a trained run still needs (``ToFinish``). No framework is
imported here: a night with nothing to do answers with a ``TrainResult`` before Keras loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vgg_cli.runs.summary import Outcome, Summary

if TYPE_CHECKING:
    from vgg_cli.training.session import Session


@dataclass
class ToFinish:
    """What the end of a trained run (``vgg_cli.job``: calibration, evaluation, the promotion decision, latest,
    pruning) needs: the session that trained it and its best epoch."""
    session: Session
    best: dict | None  # the best epoch's metrics row


@dataclass
class TrainResult:
    """What training did. A trained run's promotion is still pending (``to_finish``): the caller finishes it,
    under the same lock (``vgg_cli.job``), so training never imports promotion or prediction."""
    status: Outcome
    run_dir: Path
    summary: Summary
    to_finish: ToFinish | None = None

    @property
    def promoted(self) -> bool | None:
        """None when no promotion decision was made (nothing trained)."""
        if self.summary.promotion is None or self.status != Outcome.TRAINED:
            return None
        return self.summary.promoted
