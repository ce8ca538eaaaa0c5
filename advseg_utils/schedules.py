"""Optimisers and learning-rate schedules as the paper has them.

The paper (after DeepLab): G by SGD with momentum 0.9 and coupled weight decay 5e-4
(:class:`~advseg_utils.method.trainer.SegmentationTrainer`'s ``weight_decay``), learning rate 2.5e-4 with
10x on the head (its ``head_lr_multiplier``); D by Adam at 1e-4 with betas (0.9, 0.99); both
rates decayed as ``lr * (1 - step / total_steps) ** 0.9``. The schedules are keyed on each
optimiser's own iteration counter, which checkpoints save, so a resumed run continues them.

Two small differences from PyTorch remain: Keras's momentum SGD folds each step's rate into
the velocity (PyTorch multiplies the whole velocity by the current rate; the same under a
constant rate), and Keras's Adam adds epsilon to the un-corrected second moment.
"""
from __future__ import annotations

import keras


def poly_decay(learning_rate: float, total_steps: int, power: float = 0.9):
    """``learning_rate * (1 - step / total_steps) ** power``, 0 from ``total_steps`` on."""
    return keras.optimizers.schedules.PolynomialDecay(
        learning_rate, decay_steps=total_steps, end_learning_rate=0.0, power=power
    )


def paper_optimizers(
    total_steps: int,
    g_learning_rate: float = 2.5e-4,
    d_learning_rate: float = 1e-4,
    momentum: float = 0.9,
    d_betas: tuple[float, float] = (0.9, 0.99),
    power: float = 0.9,
) -> tuple[keras.optimizers.SGD, keras.optimizers.Adam]:
    """(G's optimiser, D's optimiser) as in the paper, decayed over ``total_steps``."""
    g_optimizer = keras.optimizers.SGD(poly_decay(g_learning_rate, total_steps, power), momentum=momentum)
    d_optimizer = keras.optimizers.Adam(
        poly_decay(d_learning_rate, total_steps, power), beta_1=d_betas[0], beta_2=d_betas[1], epsilon=1e-8
    )
    return g_optimizer, d_optimizer
