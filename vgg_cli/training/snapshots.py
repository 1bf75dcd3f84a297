"""Light checkpoints: when most of a model is frozen, an epoch stores only what changed since its base.

A frozen VGG16 backbone is ~57 MB that no epoch changes; writing it every epoch was most of a head-only run's
time. So an epoch's checkpoint is one of:

- ``epoch-NNNN.keras``: the whole model with its optimizer state (a plain Keras file). Written for the first epoch
  of each phase in a session, and for every epoch when most of the model trains (nothing to save there).
- ``epoch-NNNN.delta.npz``: the model and optimizer variables whose values differ from a *base*, an earlier
  ``epoch-KKKK.keras`` of the same run and phase, which it names. Loading one is loading the base and assigning the
  stored values, so it restores exactly what a full checkpoint would (every variable, the optimizer's included,
  bit for bit). A variable counts as unchanged when its bytes hash the same as the base's, or when it belongs to a
  frozen layer (which no epoch of the phase can change, and which is then not even read).

The commit protocol (``vgg_cli.training.checkpoints``) is unchanged: a checkpoint, light or full, is written
atomically before ``state.json`` names it, and a base is kept while a kept checkpoint names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vgg_cli.errors import NoInputError
from vgg_cli.fsio import write_bytes

FORMAT = 1
DELTA_SUFFIX = ".delta.npz"
# A model whose trainable share of the bytes is above this is checkpointed whole every epoch: a delta would
# hold nearly everything anyway.
LIGHT_WHEN_TRAINABLE_BELOW = 0.5


def is_delta(path: Path) -> bool:
    return path.name.endswith(DELTA_SUFFIX)


def _arrays(variables) -> list[np.ndarray]:
    import keras

    # the Keras variable, as Keras' own saving does (its __array__ makes a 0-d array of a scalar; numpy refuses
    # the bare value of a scalar MirroredVariable)
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(str((a.dtype.str, a.shape)).encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def _structure(model) -> tuple:
    """What must be the same for a delta to apply to a base: the trainable flags and the optimizer object."""
    return (id(model.optimizer), tuple(bool(v.trainable) for v in model.variables), len(model.optimizer.variables))


def worth_it(model) -> bool:
    sizes = [(int(np.prod(v.shape)), bool(v.trainable)) for v in model.variables]
    total = sum(n for n, _ in sizes) or 1
    return sum(n for n, t in sizes if t) / total < LIGHT_WHEN_TRAINABLE_BELOW


def _frozen(model) -> frozenset[int]:
    """Indices in ``model.variables`` of the variables of frozen layers (``trainable`` False): training cannot change
    them within a phase (a frozen BatchNormalization runs in inference mode), so a delta neither reads nor hashes
    them (a dropout's random state, which a frozen layer would still advance, excepted)."""
    ids: set[int] = set()
    stack = [model]
    while stack:
        layer = stack.pop()
        if not layer.trainable:
            ids.update(id(v) for v in layer.variables)
        else:
            stack.extend(getattr(layer, "layers", ()))
    return frozenset(i for i, v in enumerate(model.variables)
                     if id(v) in ids and not v.trainable and "seed_generator" not in v.path)


class Base:
    """A full checkpoint that deltas refer to, with the digests of its variables and which of them are frozen."""

    def __init__(self, path: Path, model_digests: list[str], optimizer_digests: list[str], structure: tuple,
                 frozen: frozenset[int] = frozenset()):
        self.path, self.model_digests, self.optimizer_digests = path, model_digests, optimizer_digests
        self.structure, self.frozen = structure, frozen

    @classmethod
    def of(cls, path: Path, model) -> "Base":
        """The base ``path`` holds, given ``model`` as it is right after being saved to or loaded from it."""
        return cls(path, [_digest(a) for a in _arrays(model.variables)],
                   [_digest(a) for a in _arrays(model.optimizer.variables)], _structure(model), _frozen(model))

    def changing(self, kind: str, variables) -> list[tuple[int, object]]:
        """(index, variable) of the ``kind`` ("model" or "optimizer") variables that training can change."""
        skip = self.frozen if kind == "model" else frozenset()
        return [(i, v) for i, v in enumerate(variables) if i not in skip]

    def fits(self, model) -> bool:
        return self.path.is_file() and self.structure == _structure(model)


def delta_bytes(model, base: Base) -> bytes:
    """The ``.delta.npz`` content of ``model`` against ``base``."""
    stored: dict[str, np.ndarray] = {}
    manifest: dict = {"format": FORMAT, "base": base.path.name, "model": [], "optimizer": []}
    for kind, variables, digests in (("model", model.variables, base.model_digests),
                                     ("optimizer", model.optimizer.variables, base.optimizer_digests)):
        changing = base.changing(kind, variables)
        values = dict(zip((i for i, _ in changing), _arrays([v for _, v in changing])))
        for i, v in enumerate(variables):
            here = i in values and _digest(values[i]) != digests[i]
            manifest[kind].append([v.path, [int(d) for d in v.shape], here])
            if here:
                stored[f"{kind[0]}{i}"] = values[i]
    buf = io.BytesIO()
    np.savez(buf, __manifest__=np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8), **stored)
    return buf.getvalue()


def write_delta(model, base: Base, path: Path) -> None:
    write_bytes(path, delta_bytes(model, base))


DAMAGED = (OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, EOFError)  # what damaged npz bytes raise


@contextlib.contextmanager
def _opened(path: Path):
    """A delta's arrays; damaged bytes (a bad CRC, a cut file) met while reading any of them are one line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            yield z
    except DAMAGED as e:
        raise NoInputError(f"checkpoint {str(path)!r} could not be loaded ({type(e).__name__}: {e}); the run cannot be "
                           f"resumed from it: start a new run") from None


def read_manifest(path: Path) -> dict:
    """A delta's manifest (its base's file name and which variables it stores); one line when it is damaged."""
    with _opened(path) as z:
        manifest = json.loads(z["__manifest__"].tobytes().decode())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("base"), str):
            raise ValueError(f"format {manifest.get('format')!r}")
        return manifest


def base_of(path: Path) -> Path:
    return path.parent / read_manifest(path)["base"]


def apply_delta(model, path: Path) -> None:
    """Assign a delta's stored values to ``model``, loaded from its base (variables checked by path and shape)."""
    manifest = read_manifest(path)
    with _opened(path) as z:
        for kind, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
            entries = manifest[kind]
            if len(entries) != len(variables):
                raise NoInputError(f"checkpoint {str(path)!r} has {len(entries)} {kind} variables, its base "
                                   f"{manifest['base']} {len(variables)}; the run cannot be resumed from it: start "
                                   f"a new run")
            for i, ((name, shape, here), v) in enumerate(zip(entries, variables)):
                # by position, checked by shape: variable paths and names are not stable (a loaded model's
                # variables can be 'seed_generator_1' where the trained one's were 'seed_generator')
                if tuple(shape) != tuple(v.shape):
                    raise NoInputError(f"checkpoint {str(path)!r} does not fit its base {manifest['base']} "
                                       f"({name} {tuple(shape)} vs {v.path} {tuple(v.shape)}); the run cannot be "
                                       f"resumed from it: start a new run")
                if here:
                    v.assign(z[f"{kind[0]}{i}"])


def holds(model, path: Path, base: Base | None) -> bool:
    """Whether ``model`` is exactly what the delta at ``path`` restores (so it can be saved instead of loaded
    again): every stored variable equal, every other one hashing as ``base``'s, which must be the delta's base."""
    if base is None or base.path.name != read_manifest(path)["base"] or not base.fits(model):
        return False
    with _opened(path) as z:
        for kind, variables, digests in (("model", model.variables, base.model_digests),
                                         ("optimizer", model.optimizer.variables, base.optimizer_digests)):
            changing = base.changing(kind, variables)
            for (i, _), a in zip(changing, _arrays([v for _, v in changing])):
                key = f"{kind[0]}{i}"
                if not (np.array_equal(z[key], a) if key in z.files else _digest(a) == digests[i]):
                    return False
    return True

