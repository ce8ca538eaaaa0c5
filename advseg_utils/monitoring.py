"""Warnings for an adversarial game that has stopped: D has won, or D learns nothing.

The two questions users of the original implementation asked most about its loss curves
(hfslyc/AdvSemiSeg issues #7, #21, #39, #56): D's loss sliding towards 0, and D's loss stuck at
log 2. Its authors' answer: when adversarial training works, D's loss stays around 0.2 to 0.5.
"""
from __future__ import annotations

import math
import warnings

import keras

#: D's loss when its every output is 0.5: it cannot tell G's maps from label maps at all.
LOG_2 = math.log(2.0)


class DiscriminatorCollapseWarning(UserWarning):
    """D has won, or has learned nothing, for a sustained stretch of training."""


WON_ADVICE = (
    "D has won: it tells G's probability maps from one-hot label maps (almost) perfectly, so its "
    "confidence map says little and G's adversarial gradient vanishes or misleads. Try, in this "
    "order: look for statistics that differ between the two kinds of maps other than their "
    "content (the original's authors' first suspect: e.g. a second softmax on G's maps, or labels "
    "that are not one-hot; softness itself is one, and discriminator_input='argmax' shows D G's "
    "arg-max as one-hot instead, benchmarks/what_d_sees.py tells which D judges); a larger "
    "lambda_adv (G then pushes back harder); a lower learning_rate_d; the 'small' discriminator."
)
STUCK_ADVICE = (
    "D learns nothing: its loss stays at log 2 = 0.693, every confidence is about 0.5, so the "
    "semi-supervised loss keeps almost every pixel above t_semi=0.2 and trains G on its own "
    "mistakes. Try: a higher learning_rate_d; a smaller lambda_adv (G may be fooling D as fast "
    "as D learns); check that D's batches carry 'd_label' maps that hold classes, not only the "
    "ignore label."
)


class DiscriminatorMonitor(keras.callbacks.Callback):
    """Warns (:class:`DiscriminatorCollapseWarning`, once per stretch) when, for ``patience``
    iterations in a row, D has won (``loss_d`` below ``won_loss`` with ``d_acc_real`` and
    ``d_acc_fake`` both above ``won_accuracy``) or learned nothing (``loss_d`` within
    ``stuck_tolerance`` of log 2), saying what to try. Does nothing without ``loss_d`` (the
    baseline).

    It reads the logs Keras passes after each batch, which are means since the start of the
    current epoch: a smoothed signal, so a single odd batch does not count as a stretch.
    """

    def __init__(
        self,
        patience: int = 200,
        won_loss: float = 0.05,
        won_accuracy: float = 0.95,
        stuck_tolerance: float = 0.01,
    ):
        super().__init__()
        if patience < 1:
            raise ValueError(f"patience={patience}; expected a positive number of iterations")
        self.patience = patience
        self.won_loss = won_loss
        self.won_accuracy = won_accuracy
        self.stuck_tolerance = stuck_tolerance
        self._state, self._length, self._warned = None, 0, False

    def diagnosis(self, logs: dict) -> str | None:
        """"won", "stuck" or None for one batch's logs."""
        if "loss_d" not in logs:
            return None
        loss_d = float(logs["loss_d"])
        accuracies = [float(logs.get(name, 0.0)) for name in ("d_acc_real", "d_acc_fake")]
        if loss_d < self.won_loss and min(accuracies) > self.won_accuracy:
            return "won"
        if abs(loss_d - LOG_2) < self.stuck_tolerance:
            return "stuck"
        return None

    def on_train_begin(self, logs=None):
        self._state, self._length, self._warned = None, 0, False

    def on_train_batch_end(self, batch, logs=None):
        state = self.diagnosis(logs or {})
        if state != self._state:
            self._state, self._length, self._warned = state, 0, False
        self._length += 1
        if state is None or self._warned or self._length < self.patience:
            return
        self._warned = True
        figures = ", ".join(f"{name} {float(logs[name]):.3f}" for name in ("loss_d", "d_acc_real", "d_acc_fake") if name in logs)
        advice = WON_ADVICE if state == "won" else STUCK_ADVICE
        warnings.warn(
            f"for the last {self._length} iterations ({figures}): {advice}",
            DiscriminatorCollapseWarning,
            stacklevel=2,
        )
