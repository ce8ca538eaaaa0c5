"""Colourised masks and overlays pixel by pixel; every plot returns a closed Figure with the
expected axes, headless."""
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from advseg_utils.datasets import sample_dataset  # noqa: E402
from advseg_utils.tables import iou_table
from advseg_utils.viz import (  # noqa: E402
    class_legend,
    colorize_mask,
    overlay,
    plot_history,
    plot_overlay,
    plot_per_class_iou,
    plot_predictions,
    plot_pseudo_labels,
    plot_samples,
)

PALETTE = np.array([[0, 0, 0], [200, 0, 100], [0, 128, 0]], dtype=np.uint8)
CLASS_NAMES = ["background", "cat", "tree"]


def _batch(count=2, height=6, width=8):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, height, width, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (count, height, width))
    labels[:, 0, 0] = 255
    return images, labels


def test_colorize_mask_maps_classes_to_palette_and_ignore_to_ignore_color():
    mask = np.array([[0, 1], [2, 255]])
    colours = colorize_mask(mask, PALETTE, ignore_color=(10, 20, 30))
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 3)
    np.testing.assert_array_equal(colours, [[[0, 0, 0], [200, 0, 100]], [[0, 128, 0], [10, 20, 30]]])
    np.testing.assert_array_equal(colorize_mask(mask, PALETTE)[1, 1], [255, 255, 255])


def test_colorize_mask_rejects_classes_beyond_the_palette():
    with pytest.raises(ValueError, match=r"value 7; expected classes 0..2"):
        colorize_mask(np.array([[0, 7]]), PALETTE)


def test_overlay_blends_by_alpha_and_leaves_ignored_pixels_alone():
    image = np.array([[[100, 40, 200], [100, 40, 200]]], dtype=np.float32)
    blended = overlay(image, np.array([[1, 255]]), PALETTE, alpha=0.25)
    # 0.75 * (100, 40, 200) + 0.25 * (200, 0, 100) = (125, 30, 175)
    np.testing.assert_array_equal(blended, [[[125, 30, 175], [100, 40, 200]]])
    assert blended.dtype == np.uint8


def test_plot_samples_has_an_image_and_a_label_per_sample():
    images, labels = _batch(3)
    fig = plot_samples(images.astype(np.uint8), labels, PALETTE, titles=["a", "b", "c"])
    assert len(fig.axes) == 6
    assert [axis.get_title() for axis in fig.axes[:3]] == ["a", "b", "c"]


def test_plot_predictions_rows_confidence_colorbar_and_legend_of_present_classes():
    images, labels = _batch(2)
    labels[labels == 2] = 1
    predictions = np.zeros_like(labels)  # class 2 ("tree") occurs nowhere: not in the legend
    assert len(plot_predictions(images, labels, predictions, PALETTE).axes) == 6

    confidence = np.random.default_rng(1).random((2, 6, 8, 1))
    fig = plot_predictions(images, labels, predictions, PALETTE, confidence=confidence, class_names=CLASS_NAMES)
    assert len(fig.axes) == 2 * 4 + 1  # one shared colour bar
    assert [axis.get_title() for axis in fig.axes[:4]] == ["image", "ground truth", "prediction", "D confidence"]
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["background", "cat"]


def test_plot_predictions_takes_images_of_different_sizes():
    images = [np.zeros((4, 6, 3), np.uint8), np.zeros((5, 3, 3), np.uint8)]
    labels = [np.zeros((4, 6), int), np.ones((5, 3), int)]
    assert len(plot_predictions(images, labels, labels, PALETTE).axes) == 6


def test_plot_pseudo_labels_stripes_masked_pixels_and_reports_the_kept_share():
    images, pseudo_labels = _batch(2)
    pseudo_labels[pseudo_labels == 255] = 0
    confidence = np.zeros((2, 6, 8))
    confidence[:, :, :2] = 0.9  # 2 of 8 columns kept
    confidence[:, :, 2] = 0.2  # exactly the threshold: masked out
    fig = plot_pseudo_labels(images, confidence, pseudo_labels, threshold=0.2, palette=PALETTE)
    assert len(fig.axes) == 2 * 3 + 1
    pseudo_axis = fig.axes[2]
    assert pseudo_axis.get_title() == "pseudo-label: 25.0% kept"
    shown = pseudo_axis.images[0].get_array()
    np.testing.assert_array_equal(shown[:, :2], PALETTE[pseudo_labels[0, :, :2]])
    masked = shown[:, 2:].reshape(-1, 3)
    assert set(map(tuple, masked)) == {(0, 0, 0), (255, 255, 255)}


def test_plot_per_class_iou_marks_absent_classes():
    fig = plot_per_class_iou(np.array([0.9, np.nan, 0.5]), CLASS_NAMES)
    (axis,) = fig.axes
    texts = [text.get_text() for text in axis.texts]
    assert texts == ["90.0", "absent", "50.0"]
    assert axis.get_title() == "mean IoU 70.0%"


def test_plot_history_one_subplot_per_group_present():
    history = {
        key: [1.0, 0.5]
        for key in ("loss_seg", "loss_adv", "loss_semi", "loss_d", "semi_ratio", "d_acc_real", "d_acc_fake")
    }
    history["val_mean_iou"] = [0.2, 0.3]
    fig = plot_history(history)
    titles = [axis.get_title() for axis in fig.axes]
    assert titles == [
        "generator losses",
        "adversarial loss",
        "discriminator loss",
        "discriminator accuracy",
        "pixels kept for the semi loss",
        "mean IoU",
    ]

    class History:  # keras.callbacks.History keeps its dict in .history
        history = {"loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "learning_rate": [0.1, 0.05]}

    fig = plot_history(History())
    assert [axis.get_title() for axis in fig.axes] == ["generator losses", "other"]
    assert [line.get_label() for line in fig.axes[0].lines] == ["loss", "val_loss"]


def test_iou_table_lists_every_class_and_the_mean():
    table = iou_table(np.array([0.5, np.nan, 2 / 3]), CLASS_NAMES)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 1
    for name, value in zip(CLASS_NAMES, ["50.0", "absent", "66.7"]):
        assert any(name in line and value in line for line in lines)
    assert "**mean**" in lines[-1] and "58.3" in lines[-1]  # (1/2 + 2/3) / 2
    assert "12.3" in iou_table(np.array([0.5, np.nan, 2 / 3]), CLASS_NAMES, mean=0.123).splitlines()[-1]


def test_class_legend_patches_carry_palette_colours():
    patches = class_legend(CLASS_NAMES, PALETTE, classes=[1])
    assert [patch.get_label() for patch in patches] == ["cat"]
    np.testing.assert_allclose(patches[0].get_facecolor()[:3], np.array([200, 0, 100]) / 255)


def test_plots_render_and_leave_no_figure_open_in_pyplot():
    images, labels = _batch(1)
    confidence = np.full(labels.shape, 0.5)
    figures = [
        plot_samples(images, labels, PALETTE),
        plot_predictions(images, labels, labels, PALETTE, confidence=confidence, class_names=CLASS_NAMES),
        plot_pseudo_labels(images, confidence, np.zeros_like(labels), 0.7, PALETTE),
        plot_per_class_iou(np.array([0.1, np.nan, 0.3]), CLASS_NAMES),
        plot_history({"loss_seg": [1.0, 0.5], "val_mean_iou": [0.1, 0.2]}),
    ]
    for fig in figures:
        fig.savefig(io.BytesIO(), format="png")
    assert plt.get_fignums() == []


def test_plot_overlay_colours_the_objects_and_leaves_background_clear():
    val_set = sample_dataset("val")
    image = np.full((4, 6, 3), 100, np.uint8)
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:4] = 8  # cat
    fig = plot_overlay(image, labels, val_set.palette, val_set.class_names, confidence=np.full((4, 6), 0.3))
    shown = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(shown[labels == 0], image[labels == 0])
    assert (shown[labels == 8] != image[labels == 8]).any()
    assert len(fig.axes[1].images) == 1  # the confidence map
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["cat"]
