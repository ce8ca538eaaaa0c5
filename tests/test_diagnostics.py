"""What the semi-supervised loss really learns from, and when the adversarial game has stopped.

The pseudo-label accuracy logs read the unlabeled images' true labels, which must never reach a
loss; the discriminator monitor warns when D has won or learned nothing for a stretch.
"""
import warnings

import numpy as np
import pytest
import tensorflow as tf

from advseg_utils.method import pseudo_label_accuracy
from advseg_utils.monitoring import LOG_2, DiscriminatorCollapseWarning, DiscriminatorMonitor
from test_training import C, assert_weights_equal, make_batch, make_model, weights


def with_true_labels(batch: dict, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, batch["unlabeled_image"].shape[:3]).astype("int32")
    labels[:, -1, :] = 255  # an ignored row
    return {**batch, "unlabeled_label": labels}


# --- pseudo-label accuracy -----------------------------------------------------------------


def test_pseudo_label_accuracy_over_all_and_over_kept_pixels_by_hand():
    # G's arg-max [[0, 1], [2, 0]]; true labels [[0, 1], [1, 255]]; D confident on all but (0, 1).
    logits = tf.one_hot([[[0, 1], [2, 0]]], 3) * 5.0
    true = tf.constant([[[0, 1], [1, 255]]])
    d_logits = tf.constant([[[[3.0], [-3.0]], [[3.0], [3.0]]]])  # sigmoid 0.95, 0.05, 0.95, 0.95
    over_all, over_kept = pseudo_label_accuracy(true, logits, d_logits, t_semi=0.2)
    assert float(over_all) == pytest.approx(2 / 3)  # (0,0) and (0,1) right of 3 counted pixels
    assert float(over_kept) == pytest.approx(1 / 2)  # kept and counted: (0,0) right, (1,0) wrong


def test_model_logs_the_pseudo_label_accuracy_of_gs_prediction_on_the_unlabeled_images():
    model = make_model(t_semi=0.0)  # every pixel kept: both accuracies are the arg-max's accuracy
    batch = with_true_labels(make_batch())
    prediction = np.argmax(model.generator(batch["unlabeled_image"]), axis=-1)  # before the update
    counted = batch["unlabeled_label"] != 255
    expected = np.mean(prediction[counted] == batch["unlabeled_label"][counted])
    logs = model.train_on_batch(batch, return_dict=True)
    assert float(logs["pseudo_acc_all"]) == pytest.approx(expected)
    assert float(logs["pseudo_acc_kept"]) == pytest.approx(expected)
    assert float(logs["semi_ratio"]) == 1.0


def test_the_unlabeled_images_true_labels_reach_no_gradient():
    batch = make_batch()
    plain, diagnosed = make_model(), make_model()
    for _ in range(2):
        plain_logs = plain.train_on_batch(batch, return_dict=True)
        diagnosed_logs = diagnosed.train_on_batch(with_true_labels(batch), return_dict=True)
    assert_weights_equal(weights(diagnosed.generator), weights(plain.generator))
    assert_weights_equal(weights(diagnosed.discriminator), weights(plain.discriminator))
    assert "pseudo_acc_all" not in plain_logs and "pseudo_acc_kept" in diagnosed_logs
    assert {k: float(v) for k, v in plain_logs.items()} == {
        k: float(v) for k, v in diagnosed_logs.items() if not k.startswith("pseudo_acc")
    }


# --- the discriminator monitor -------------------------------------------------------------

WON = {"loss_d": 0.01, "d_acc_real": 0.99, "d_acc_fake": 0.98}
STUCK = {"loss_d": LOG_2 + 0.002, "d_acc_real": 0.5, "d_acc_fake": 0.5}
HEALTHY = {"loss_d": 0.35, "d_acc_real": 0.8, "d_acc_fake": 0.7}


def fed(logs_per_batch: list[dict], patience: int = 5) -> list[str]:
    """The warnings a monitor gives when fed these batch logs."""
    monitor = DiscriminatorMonitor(patience=patience)
    monitor.on_train_begin()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch, logs in enumerate(logs_per_batch):
            monitor.on_train_batch_end(batch, logs)
    assert all(w.category is DiscriminatorCollapseWarning for w in caught)
    return [str(w.message) for w in caught]


def test_monitor_warns_once_when_d_has_won_for_a_sustained_stretch():
    messages = fed([HEALTHY] * 3 + [WON] * 12)
    assert len(messages) == 1
    assert "D has won" in messages[0] and "learning_rate_d" in messages[0] and "discriminator_input='argmax'" in messages[0] and "loss_d 0.010" in messages[0]


def test_monitor_warns_when_d_loss_is_stuck_at_log_2():
    messages = fed([STUCK] * 5)
    assert len(messages) == 1 and "D learns nothing" in messages[0] and "log 2" in messages[0]


def test_monitor_does_not_warn_on_a_healthy_game_a_short_stretch_or_the_baseline():
    assert fed([HEALTHY] * 50) == []
    assert fed([WON] * 4 + [HEALTHY] + [WON] * 4 + [STUCK] * 4) == []  # no stretch reaches 5
    assert fed([{"loss": 0.1, "loss_seg": 0.1}] * 50) == []  # no D
    assert fed([{**WON, "d_acc_fake": 0.6}] * 50) == []  # a low loss alone is not a won game


def test_monitor_warns_again_after_the_game_recovered_and_collapsed_again():
    assert len(fed([WON] * 5 + [HEALTHY] * 2 + [WON] * 5)) == 2


def test_plot_history_draws_both_pseudo_label_accuracies_in_their_own_panel():
    from advseg_utils.viz import plot_history

    history = {"semi_ratio": [0.3, 0.4], "pseudo_acc_all": [0.5, 0.6], "pseudo_acc_kept": [0.7, 0.8]}
    panels = {axis.get_title(): [line.get_label() for line in axis.get_lines()] for axis in plot_history(history).axes}
    assert panels == {
        "pixels kept for the semi loss": ["semi_ratio"],
        "pseudo-label accuracy (true labels)": ["pseudo_acc_all", "pseudo_acc_kept"],
    }
