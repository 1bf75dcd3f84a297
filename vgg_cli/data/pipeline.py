"""Batches for training and evaluation.

This is the one module that uses TensorFlow directly (``tf.data``); model, training and prediction code use
Keras APIs only. Images are decoded by ``vgg_cli.data.images.load_image``, the same function prediction uses,
in parallel (Pillow releases the GIL while decoding), then batched and prefetched.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vgg_cli.data.images import load_image


def make_dataset(paths: Sequence[str], labels: Sequence[int], image_size: int, batch_size: int,
                 shuffle: bool, seed: int):
    """A ``tf.data.Dataset`` of (uint8 images [B, S, S, 3], int32 labels [B])."""
    import tensorflow as tf

    if not paths:
        raise ValueError("make_dataset needs at least one image")

    def _load(path: bytes) -> np.ndarray:
        return load_image(path.decode("utf-8"), image_size)

    def _map(path, label):
        image = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, dtype=np.int32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
