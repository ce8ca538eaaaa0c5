"""Pictures for the notebooks: colourised masks, overlays, sample and prediction grids with the
discriminator's confidence map, pseudo-labels, per-class IoU and loss curves (the text tables
are :mod:`advseg_utils.tables`').

Every plot function returns a closed matplotlib Figure: a notebook shows it by ending a cell
with it (or ``display(fig)``), saves it with ``fig.savefig``, and nothing piles up in pyplot.
Images are RGB, float in [0, 255] or uint8; masks hold class indices and the ignore label 255.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from advseg_utils.tables import checked_iou, mean_of_present

#: History keys plotted together, with the subplot title; ``val_<key>`` joins its key.
HISTORY_GROUPS = (
    ("generator losses", ("loss", "loss_seg", "loss_semi")),
    ("adversarial loss", ("loss_adv",)),
    ("discriminator loss", ("loss_d",)),
    ("discriminator accuracy", ("d_acc_real", "d_acc_fake")),
    ("pixels kept for the semi loss", ("semi_ratio",)),
    ("pseudo-label accuracy (true labels)", ("pseudo_acc_all", "pseudo_acc_kept")),
    ("mean IoU", ("mean_iou",)),
)

_CELL_INCHES = 3.0


def colorize_mask(mask, palette, ignore_color=(255, 255, 255), ignore_label: int = 255) -> np.ndarray:
    """uint8 RGB [H, W, 3]: class k drawn in ``palette[k]``, the ignore label in ``ignore_color``."""
    mask = np.asarray(mask)
    palette = np.asarray(palette, dtype=np.uint8)
    invalid = ((mask < 0) | (mask >= len(palette))) & (mask != ignore_label)
    if invalid.any():
        raise ValueError(
            f"mask holds value {mask[invalid][0]}; expected classes 0..{len(palette) - 1} "
            f"(the palette's size) or the ignore label {ignore_label}"
        )
    colours = np.concatenate([palette, np.asarray([ignore_color], dtype=np.uint8)])
    return colours[np.where(mask == ignore_label, len(palette), mask)]


def overlay(image, mask, palette, alpha: float = 0.5, ignore_label: int = 255) -> np.ndarray:
    """uint8 RGB: ``(1 - alpha) * image + alpha * colour`` where labelled, the image where ignored."""
    image = _as_uint8(image).astype(np.float64)
    mask = np.asarray(mask)
    blended = (1 - alpha) * image + alpha * colorize_mask(mask, palette, ignore_label=ignore_label)
    blended = np.where((mask == ignore_label)[..., None], image, blended)
    return np.round(blended).astype(np.uint8)


def class_legend(class_names: Sequence[str], palette, classes=None) -> list[Patch]:
    """Colour patches naming ``classes`` (default: all), for ``fig.legend(handles=...)``."""
    palette = np.asarray(palette)
    classes = range(len(class_names)) if classes is None else classes
    return [Patch(facecolor=palette[k] / 255.0, edgecolor="black", label=class_names[k]) for k in classes]


def plot_samples(images, masks, palette, titles: Sequence[str] | None = None) -> Figure:
    """One column per sample: the image above its colourised label."""
    fig, axes = _grid(2, len(images), np.shape(images[0]))
    for column, (image, mask) in enumerate(zip(images, masks)):
        axes[0, column].imshow(_as_uint8(image))
        axes[1, column].imshow(colorize_mask(mask, palette))
        if titles is not None:
            axes[0, column].set_title(titles[column], fontsize=9)
    return _closed(fig)


def plot_predictions(
    images,
    labels,
    predictions,
    palette,
    confidence=None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Rows of image | ground truth | prediction | (D's confidence map, 0..1, if given).

    ``predictions`` are label maps (the argmax of the logits); ``confidence`` is
    sigmoid(D(softmax(logits))) as [N, H, W] or [N, H, W, 1]. With ``class_names``, a legend
    names the classes that occur in the truth or the predictions.
    """
    titles = ["image", "ground truth", "prediction"] + (["D confidence"] if confidence is not None else [])
    fig, axes = _grid(len(images), len(titles), np.shape(images[0]))
    for row in range(len(images)):
        axes[row, 0].imshow(_as_uint8(images[row]))
        axes[row, 1].imshow(colorize_mask(labels[row], palette))
        axes[row, 2].imshow(colorize_mask(predictions[row], palette))
        if confidence is not None:
            confidence_image = axes[row, 3].imshow(_confidence_map(confidence[row]), vmin=0.0, vmax=1.0)
    for axis, title in zip(axes[0], titles):
        axis.set_title(title, fontsize=10)
    if confidence is not None:
        fig.colorbar(confidence_image, ax=axes[:, 3], shrink=0.8)
    if class_names is not None:
        present = np.unique(np.concatenate([np.ravel(m) for m in (*labels, *predictions)]))
        present = [k for k in present if k < len(class_names)]
        handles = class_legend(class_names, palette, present)
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    return _closed(fig)


def plot_pseudo_labels(images, confidence, pseudo_labels, threshold: float, palette) -> Figure:
    """Rows of image | D confidence | pseudo-label kept where confidence > ``threshold``.

    Masked-out pixels (confidence <= threshold: ignored by the semi-supervised loss) are drawn
    as black and white stripes; each row's title gives the share of pixels kept.
    """
    fig, axes = _grid(len(images), 3, np.shape(images[0]))
    for row in range(len(images)):
        confidence_map = _confidence_map(confidence[row])
        kept = confidence_map > threshold
        pseudo_label = colorize_mask(np.where(kept, pseudo_labels[row], 255), palette)
        pseudo_label[~kept] = _stripes(kept.shape)[~kept]
        axes[row, 0].imshow(_as_uint8(images[row]))
        confidence_image = axes[row, 1].imshow(confidence_map, vmin=0.0, vmax=1.0)
        axes[row, 2].imshow(pseudo_label)
        axes[row, 2].set_title(f"pseudo-label: {kept.mean():.1%} kept", fontsize=10)
    axes[0, 0].set_title("image", fontsize=10)
    axes[0, 1].set_title("D confidence", fontsize=10)
    fig.colorbar(confidence_image, ax=axes[:, 1], shrink=0.8)
    fig.suptitle(f"pseudo-labels kept where D confidence > {threshold:g} (stripes: ignored)")
    return _closed(fig)


def plot_overlay(
    image, labels, palette: np.ndarray, class_names: Sequence[str], confidence=None, ignore_label: int = 255
) -> Figure:
    """The image with its predicted classes laid over it (a legend names them; a class named
    "background" is left clear) and, when given, D's confidence map beside it; a closed
    figure, as the other plots."""
    labels = np.asarray(labels)
    if "background" in class_names:
        background = list(class_names).index("background")
        labels = np.where(labels == background, ignore_label, labels)  # overlay leaves ignored pixels clear
    found = [k for k in np.unique(labels) if k < len(class_names)]
    panels = 1 if confidence is None else 2
    fig, axes = plt.subplots(
        1, panels, figsize=(5 * panels, 5 * image.shape[0] / image.shape[1] + 0.6), squeeze=False, layout="constrained"
    )
    axes = axes[0]
    axes[0].imshow(overlay(image, labels, palette, ignore_label=ignore_label))
    axes[0].set_title("prediction", fontsize=10)
    if confidence is not None:
        shown = axes[1].imshow(confidence, vmin=0.0, vmax=1.0)
        axes[1].set_title("D confidence", fontsize=10)
        fig.colorbar(shown, ax=axes[1], shrink=0.8)
    for axis in axes:
        axis.set_axis_off()
    if found:
        handles = class_legend(class_names, palette, found)
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    return _closed(fig)


def plot_per_class_iou(iou, class_names: Sequence[str], mean: float | None = None) -> Figure:
    """Horizontal bars of per-class IoU in %, classes that did not occur (NaN) marked "absent"."""
    iou = checked_iou(iou, class_names)
    mean = mean_of_present(iou) if mean is None else mean
    fig, axis = plt.subplots(figsize=(6, 0.3 * len(iou) + 1), layout="constrained")
    rows = np.arange(len(iou))
    percent = 100 * np.nan_to_num(iou, nan=0.0)
    axis.barh(rows, percent, color="tab:blue")
    for row, value in zip(rows, iou):
        if np.isnan(value):
            axis.text(1, row, "absent", va="center", fontsize=8, color="gray")
        else:
            axis.text(100 * value + 1, row, f"{100 * value:.1f}", va="center", fontsize=8)
    if not np.isnan(mean):
        axis.axvline(100 * mean, color="tab:red", linestyle="--")
    axis.set_title(f"mean IoU {100 * mean:.1f}%")
    axis.set_yticks(rows, class_names)
    axis.invert_yaxis()
    axis.set_xlim(0, 110)
    axis.set_xlabel("IoU (%)")
    return _closed(fig)


def plot_history(history) -> Figure:
    """Training curves from a Keras ``History`` (or its ``.history`` dict), one subplot per group
    of :data:`HISTORY_GROUPS` present; other numeric keys go to a last "other" subplot."""
    history: Mapping[str, Sequence[float]] = getattr(history, "history", history)
    known = {key for _, keys in HISTORY_GROUPS for key in keys}
    groups = [
        (title, [key for base in keys for key in (base, f"val_{base}") if key in history])
        for title, keys in HISTORY_GROUPS
    ]
    groups.append(("other", [key for key in history if key.removeprefix("val_") not in known]))
    groups = [(title, keys) for title, keys in groups if keys]
    if not groups:
        raise ValueError(f"history has no values to plot: keys {sorted(history)}")
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[len(groups):]:
        fig.delaxes(axis)
    for axis, (title, keys) in zip(axes.flat, groups):
        for key in keys:
            axis.plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    return _closed(fig)


# --- helpers -------------------------------------------------------------------------------------


def _as_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else np.clip(np.round(image), 0, 255).astype(np.uint8)


def _confidence_map(confidence) -> np.ndarray:
    """One image's confidence as [H, W], from [H, W] or [H, W, 1]."""
    confidence = np.asarray(confidence)
    return confidence[..., 0] if confidence.ndim == 3 else confidence


def _stripes(shape: tuple[int, int]) -> np.ndarray:
    """Black and white diagonal stripes, uint8 RGB, a few percent of the image wide."""
    period = max(4, min(shape) // 24)
    rows, columns = np.indices(shape)
    white = ((rows + columns) // (period // 2)) % 2 == 0
    return np.repeat(np.where(white, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)


def _grid(rows: int, columns: int, image_shape: tuple[int, ...]) -> tuple[Figure, np.ndarray]:
    """A figure of image cells with the images' aspect ratio and no ticks."""
    height = _CELL_INCHES * image_shape[0] / image_shape[1]
    fig, axes = plt.subplots(
        rows, columns, figsize=(_CELL_INCHES * columns, height * rows + 0.6), squeeze=False, layout="constrained"
    )
    for axis in axes.flat:
        axis.set_axis_off()
    return fig, axes


def _closed(fig: Figure) -> Figure:
    """Detach the figure from pyplot so it is shown once (when returned) and never leaks."""
    plt.close(fig)
    return fig
