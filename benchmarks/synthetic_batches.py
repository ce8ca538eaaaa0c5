"""Synthetic training batches as numpy arrays, shared by the TensorFlow and the PyTorch
benchmarks (this module imports neither, so a PyTorch process does not load TensorFlow)."""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 21


def synthetic_arrays(mode: str, batch_size: int, crop: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 images [B, crop, crop, 3] in [0, 255] and int32 labels [B, crop, crop]
    (5% ignored, 255), with the keys a ``mode`` ("baseline", "adversarial", "semi") batch has."""
    rng = np.random.default_rng(seed)

    def images():
        return rng.uniform(0, 255, (batch_size, crop, crop, 3)).astype(np.float32)

    def labels():
        y = rng.integers(0, NUM_CLASSES, (batch_size, crop, crop)).astype(np.int32)
        y[rng.random(y.shape) < 0.05] = 255
        return y

    batch = {"image": images(), "label": labels()}
    if mode != "baseline":
        batch["d_label"] = labels()
    if mode == "semi":
        batch["unlabeled_image"] = images()
    return batch
