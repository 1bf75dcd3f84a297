"""The building blocks of the config schema's fields (``vgg_cli.config.schema``): whole numbers in a range, paths,
learning rates, and the markers a field carries for the config digest (``vgg_cli.config.digest``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pydantic import AfterValidator

AUTO = "auto"


def whole_number(lo: int, hi: int) -> AfterValidator:
    """An integer (or null, for an ``int | None`` key) lo..hi, as default.yaml documents; the error says the range."""
    def check(v: int | None) -> int | None:
        if v is not None and not lo <= v <= hi:
            side = f"greater than or equal to {lo}" if v < lo else f"less than or equal to {hi}"
            raise ValueError(f"should be {side} (a whole number {lo}..{hi})")
        return v
    return AfterValidator(check)


@dataclass(frozen=True)
class Since:
    """A key added after runs existed: at ``old`` (the value that means what runs before it did) it is left out of
    the config digest (``vgg_cli.config.digest``), so those runs stay the same job for ``--if-changed``."""
    old: Any


NOT_IN_DIGEST = "not in the config digest"  # a section that says where things go, not what is trained


def path_text(v: str | None, empty: str = "") -> str | None:
    """A path key's text, ~ expanded; NUL cannot be in a path (the OS would refuse it later, with a traceback), and
    with ``empty`` (the fix to say) neither can nothing."""
    if v is not None and "\0" in v:
        raise ValueError("a path cannot contain the NUL character (\\0); remove it")
    if empty and v is not None and not v.strip():
        raise ValueError(empty)
    return None if v is None else os.path.expanduser(str(v))


def a_path(empty: str = "") -> AfterValidator:
    return AfterValidator(lambda v: path_text(v, empty))


def positive_rate(v: Any) -> Any:
    """A learning rate: ``auto`` or a finite number > 0 (YAML reads 1e-3 without a dot as text: accept it)."""
    if v == AUTO:
        return v
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ValueError("must be a number > 0 or auto") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("must be a number > 0 or auto")
    if not 0 < v < 1e300:  # not float(v) first: a huge int has no float; NaN and inf fail this too
        raise ValueError("must be a finite number > 0 (e.g. 0.001) or auto")
    return float(v)
