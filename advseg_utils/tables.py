"""Text tables for the notebooks: per-class IoU (:func:`iou_table`) and the networks' parameter
counts (:func:`network_summary`). Plain strings, so evaluation needs no plotting library."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from advseg_utils.method.trainer import SegmentationTrainer

#: The row of :func:`iou_table` that holds the original code's mean IoU.
ORIGINAL_MEAN_LABEL = "mean, original code's formula (classes with a true positive)"


def iou_table(
    iou, class_names: Sequence[str], mean: float | None = None, original_mean: float | None = None
) -> str:
    """A markdown table of per-class IoU in % (absent classes say so), ending with the mean and,
    when given, the original code's mean (over the classes with a true positive only)."""
    iou = checked_iou(iou, class_names)
    mean = mean_of_present(iou) if mean is None else mean
    rows = [(name, "absent" if np.isnan(value) else f"{100 * value:.1f}") for name, value in zip(class_names, iou)]
    rows.append(("**mean**", f"{100 * mean:.1f}"))
    if original_mean is not None:
        rows.append((ORIGINAL_MEAN_LABEL, f"{100 * original_mean:.1f}"))
    width = max(len("class"), *(len(name) for name, _ in rows))
    lines = [f"| {'class':<{width}} | IoU (%) |", f"|{'-' * (width + 2)}|--------:|"]
    lines += [f"| {name:<{width}} | {value:>7} |" for name, value in rows]
    return "\n".join(lines)


def network_summary(model: SegmentationTrainer) -> str:
    """A short table of the networks' parameter counts, G's split into backbone and head
    (a full summary of a backbone runs to pages)."""
    generator = model.generator
    rows = [(f"G: {generator.name}", generator.count_params(), _count(generator.trainable_weights))]
    if "backbone" in (layer.name for layer in generator.layers):
        backbone = generator.get_layer("backbone")
        rows.append(("   backbone", backbone.count_params(), _count(backbone.trainable_weights)))
        rows.append(("   head", rows[0][1] - rows[1][1], rows[0][2] - rows[1][2]))
    if model.discriminator is not None:
        discriminator = model.discriminator
        rows.append((f"D: {discriminator.name}", discriminator.count_params(), _count(discriminator.trainable_weights)))
    width = max(len(label) for label, _, _ in rows) + 2
    lines = [f"{'network':<{width}}{'parameters':>14}{'trainable':>14}"]
    lines += [f"{label:<{width}}{total:>14,}{trainable:>14,}" for label, total, trainable in rows]
    return "\n".join(lines)


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def checked_iou(iou, class_names: Sequence[str]) -> np.ndarray:
    """``iou`` as float64, one value per class name (else a ValueError saying so)."""
    iou = np.asarray(iou, dtype=np.float64)
    if iou.shape != (len(class_names),):
        raise ValueError(f"iou has shape {iou.shape}; expected one value per class name ({len(class_names)},)")
    return iou


def mean_of_present(iou: np.ndarray) -> float:
    """Mean over non-NaN values, NaN when every class is absent (no RuntimeWarning)."""
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else float("nan")
