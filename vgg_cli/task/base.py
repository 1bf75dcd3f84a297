"""The task interface: everything vgg does that depends on what an image's answer is (one class of N today; a set
of labels in a multi-label task). A task is a small object; the code around it never asks which task it is.

Its NumPy half is here, below every layer that reads answers (the NumPy prediction engine imports no framework);
its Keras half (the output layer, the loss, the training metrics) is registered by the task's name at the model
layer (``vgg_cli.model.task_parts``), where Keras is."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Task(ABC):
    """What one kind of answer means. ``name`` is what a run records (summary.json "task")."""
    name: str
    promotion_metric: str  # the key of ``scores`` that champion/challenger compares (higher is better)

    @abstractmethod
    def probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """The output activation on logits (N, K) at a calibration temperature, in float64: what the model's output
        layer computes, for readers that hold logits (the feature cache, the NumPy engine, calibration)."""

    @abstractmethod
    def ranked(self, probabilities: np.ndarray, k: int) -> list[list[int]]:
        """Each row's answer, best first, at most ``k`` entries: the class indices a prediction row lists."""

    @abstractmethod
    def scores(self, truth: list[int], ranked: list[list[int]], num_classes: int) -> dict:
        """The evaluation table's numbers of answers ``ranked`` against ``truth``: ``promotion_metric`` among them."""

    @abstractmethod
    def calibrate(self, logits: np.ndarray, truth: np.ndarray) -> dict:
        """The calibration to store in the model, fitted on a validation split's logits, and why (summary.json
        "calibration": at least ``temperature``, ``fitted`` and ``reason``)."""

    @abstractmethod
    def calibration_metrics(self, probabilities: np.ndarray, truth: np.ndarray) -> dict:
        """How well probabilities are calibrated against the truth (report.json's "calibration" before/after)."""

    @abstractmethod
    def reliability(self, probabilities: np.ndarray, truth: np.ndarray) -> list[dict]:
        """The reliability diagram's bins (confidence against accuracy)."""
