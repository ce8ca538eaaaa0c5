"""Mean IoU: hand-computed cases, ignore handling, absent classes, accumulation over a whole
set, and the streaming Keras metric agreeing with the numpy functions."""
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from advseg_utils.metrics import (
    ConfusionMatrix,
    MeanIoU,
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
    mean_iou_from_confusion,
    original_mean_iou_from_confusion,
    per_class_iou,
    pixel_accuracy,
)


def test_hand_computed_two_by_three():
    # truth      prediction     confusion (rows truth, cols prediction)
    # 0 0 1      0 1 1          class 0: [1, 1, 0]
    # 1 2 2      1 2 0          class 1: [0, 2, 0]
    #                           class 2: [1, 0, 1]
    # IoU = TP / (row + column - TP):
    #   class 0: 1 / (2 + 2 - 1) = 1/3;  class 1: 2 / (2 + 3 - 2) = 2/3;  class 2: 1 / (2 + 1 - 1) = 1/2
    # mean = (1/3 + 2/3 + 1/2) / 3 = 1/2;  pixel accuracy = 4/6
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    prediction = np.array([[0, 1, 1], [1, 2, 0]])
    np.testing.assert_array_equal(confusion_matrix(truth, prediction, 3), [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_allclose(per_class_iou(truth, prediction, 3), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(truth, prediction, 3) == pytest.approx(0.5)
    assert pixel_accuracy(truth, prediction, 3) == pytest.approx(4 / 6)


def test_ignored_pixels_do_not_count_even_when_the_prediction_there_is_wrong():
    truth = np.array([[0, 0, 255], [1, 1, 255]])
    prediction = np.array([[0, 0, 1], [1, 1, 0]])
    assert confusion_matrix(truth, prediction, 2).sum() == 4
    assert mean_iou(truth, prediction, 2) == 1.0
    assert pixel_accuracy(truth, prediction, 2) == 1.0


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    # Classes 2 and 3 never occur. IoU0 = 1 / (2 + 1 - 1) = 1/2, IoU1 = 2 / (2 + 3 - 2) = 2/3.
    truth = np.array([[0, 0], [1, 1]])
    prediction = np.array([[0, 1], [1, 1]])
    iou = per_class_iou(truth, prediction, 4)
    np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
    assert np.isnan(iou[2:]).all()
    assert mean_iou(truth, prediction, 4) == pytest.approx(7 / 12)  # as 1: 0.79, as 0: 0.29


def test_class_present_only_in_the_prediction_counts_with_iou_zero():
    # IoU0 = 3 / (4 + 3 - 3) = 3/4; class 1 is predicted once but never true: IoU1 = 0.
    truth = np.array([[0, 0], [0, 0]])
    prediction = np.array([[0, 0], [0, 1]])
    np.testing.assert_allclose(per_class_iou(truth, prediction, 2), [3 / 4, 0.0])
    assert mean_iou(truth, prediction, 2) == pytest.approx(3 / 8)


def test_the_original_codes_mean_leaves_out_classes_without_a_true_positive():
    # confusion rows truth: class 0 [2, 0, 0], class 1 [1, 1, 0], class 2 [2, 0, 0]; class 3 absent
    # IoU0 = 2 / (2 + 5 - 2) = 2/5, IoU1 = 1 / (2 + 1 - 1) = 1/2, IoU2 = 0 / (2 + 0 - 0) = 0
    # standard mean (2/5 + 1/2 + 0) / 3 = 0.3; the original's leaves class 2 out: (2/5 + 1/2) / 2
    cm = confusion_matrix(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 1, 0, 0]), 4)
    assert mean_iou_from_confusion(cm) == pytest.approx(0.3)
    assert original_mean_iou_from_confusion(cm) == pytest.approx(0.45)
    # a class only predicted (IoU 0, no true positive) counts in the standard mean only
    cm = confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), 2)
    assert (mean_iou_from_confusion(cm), original_mean_iou_from_confusion(cm)) == pytest.approx((3 / 8, 3 / 4))


def test_the_two_means_agree_when_every_class_has_a_true_positive():
    cm = confusion_matrix(np.array([[0, 0, 1], [1, 2, 2]]), np.array([[0, 1, 1], [1, 2, 0]]), 3)
    assert original_mean_iou_from_confusion(cm) == pytest.approx(mean_iou_from_confusion(cm)) == pytest.approx(0.5)
    assert np.isnan(original_mean_iou_from_confusion(np.zeros((2, 2), np.int64)))


# Batch A is perfect (mIoU 1); batch B has IoU0 = 1/2, IoU1 = 0 (mIoU 1/4): the mean of the
# per-batch scores is 0.625. Over the union: [[5, 0], [1, 0]] -> IoU0 = 5/6, IoU1 = 0 -> 5/12.
BATCH_A = (np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))
BATCH_B = (np.array([[0, 1]]), np.array([[0, 0]]))


def test_accumulating_batches_equals_one_matrix_over_the_union_not_the_mean_of_batches():
    per_batch = [mean_iou(truth, prediction, 2) for truth, prediction in (BATCH_A, BATCH_B)]
    assert np.mean(per_batch) == pytest.approx(0.625)
    accumulated = ConfusionMatrix(2)
    accumulated.update(*BATCH_A)
    accumulated.update(*BATCH_B)
    np.testing.assert_array_equal(accumulated.matrix, [[5, 0], [1, 0]])
    assert accumulated.mean_iou() == pytest.approx(5 / 12)
    assert accumulated.pixel_accuracy() == pytest.approx(5 / 6)
    np.testing.assert_allclose(accumulated.per_class_iou(), [5 / 6, 0.0])


def test_keras_metric_accumulates_over_batches_like_the_union():
    metric = MeanIoU(2)
    for truth, prediction in (BATCH_A, BATCH_B):
        metric.update_state(truth, prediction)
    assert float(metric.result()) == pytest.approx(5 / 12)


def test_uint8_labels_do_not_wrap_around():
    # 20 * 21 + 19 = 439 would wrap to 183 (cell [8, 15]) in uint8 arithmetic.
    cm = confusion_matrix(np.array([20], np.uint8), np.array([19], np.uint8), 21)
    assert cm[20, 19] == 1 and cm.sum() == 1


def test_truth_outside_the_classes_is_not_counted():
    truth = np.array([[0, 11, 1]])  # 11: CamVid's void with 11 classes
    prediction = np.array([[0, 3, 1]])
    assert confusion_matrix(truth, prediction, 11).sum() == 2
    assert mean_iou(truth, prediction, 11) == 1.0


def test_no_counted_pixel_gives_nan():
    assert np.isnan(mean_iou(np.full((2, 2), 255), np.zeros((2, 2), int), 3))


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match=r"y_pred holds class 5; expected predictions in 0..2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 3)
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 2, 3\).*argmax"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2, 3)), 3)


def _random_batch(seed, shape=(3, 8, 10), num_classes=5):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_classes, shape)
    truth[rng.random(shape) < 0.2] = 255
    truth[rng.random(shape) < 0.05] = num_classes + 2  # outside the classes: not counted either
    logits = rng.normal(size=(*shape, num_classes)).astype(np.float32)
    return truth.astype(np.int32), logits


def test_keras_metric_with_logits_equals_numpy_and_resets():
    truth, logits = _random_batch(0)
    metric = MeanIoU(5)
    metric.update_state(truth, logits)
    prediction = logits.argmax(-1)
    np.testing.assert_array_equal(metric.confusion_matrix(), confusion_matrix(truth, prediction, 5))
    assert float(metric.result()) == pytest.approx(mean_iou(truth, prediction, 5), rel=1e-6)
    np.testing.assert_allclose(metric.per_class_iou(), per_class_iou(truth, prediction, 5))

    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0
    other_truth, other_logits = _random_batch(1)
    metric.update_state(other_truth[..., None], other_logits.argmax(-1))  # [B, H, W, 1] truth, label input
    assert float(metric.result()) == pytest.approx(mean_iou(other_truth, other_logits.argmax(-1), 5), rel=1e-6)


def test_keras_metric_inside_tf_function():
    metric = MeanIoU(5)
    batches = [_random_batch(seed) for seed in (2, 3)]

    @tf.function
    def update(truth, logits):
        metric.update_state(truth, logits)
        return metric.result()

    for truth, logits in batches:
        result = update(tf.constant(truth), tf.constant(logits))
    all_truth = np.concatenate([truth for truth, _ in batches])
    all_prediction = np.concatenate([logits.argmax(-1) for _, logits in batches])
    assert float(result) == pytest.approx(mean_iou(all_truth, all_prediction, 5), rel=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_keras_metric_in_compile_and_from_config(jit_compile):
    truth, _ = _random_batch(4, shape=(4, 6, 6), num_classes=3)
    images = np.random.default_rng(4).normal(size=(4, 6, 6, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        metrics=[MeanIoU(3)],
        jit_compile=jit_compile,  # Keras compiles with XLA by default on GPUs
    )
    _, result = model.evaluate(images, np.where(truth < 3, truth, 255), batch_size=2, verbose=0)
    prediction = model.predict(images, verbose=0).argmax(-1)
    assert result == pytest.approx(mean_iou(truth, prediction, 3), rel=1e-6)

    restored = MeanIoU.from_config(MeanIoU(7, ignore_label=0, name="val_iou").get_config())
    assert (restored.num_classes, restored.ignore_label, restored.name) == (7, 0, "val_iou")
    # by its registered name, as a saved model that compiled it is read back
    by_name = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(MeanIoU(7, ignore_label=0)))
    assert isinstance(by_name, MeanIoU) and (by_name.num_classes, by_name.ignore_label) == (7, 0)


def test_iou_from_confusion_marks_absent_classes_nan():
    iou = iou_from_confusion(np.array([[2, 0, 0], [0, 0, 0], [1, 0, 0]]))
    np.testing.assert_allclose(iou[[0, 2]], [2 / 3, 0.0])
    assert np.isnan(iou[1])


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from advseg_utils.metrics import MeanIoU, mean_iou
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (4, 5, 5)).astype(np.int32)
    truth[:, 0] = 255
    prediction = rng.integers(0, 4, (4, 5, 5)).astype(np.int32)
    with strategy.scope():
        metric = MeanIoU(4)
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((truth, prediction)).batch(2))  # two updates: the second adds
    for batch in batches:
        strategy.run(metric.update_state, args=batch)
    print(strategy.num_replicas_in_sync, float(metric.result()), mean_iou(truth, prediction, 4))
    """
)


def test_keras_metric_sums_over_replicas_of_a_mirrored_strategy():
    # A fresh process: logical CPU devices can only be configured before TensorFlow starts.
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    replicas, result, expected = completed.stdout.split()
    assert int(replicas) == 2
    assert float(result) == pytest.approx(float(expected), rel=1e-6)
