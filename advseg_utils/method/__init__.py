"""The method of Hung et al. (2018), one module per step of the paper, each generated from the
notebook that shows it (``tools/export_notebooks.py``), on one hand-written trainer:

* :mod:`~advseg_utils.method.baseline` (notebook 01): the segmentation loss, :class:`Baseline`;
* :mod:`~advseg_utils.method.adversarial` (02): D's and G's adversarial losses, :class:`Adversarial`;
* :mod:`~advseg_utils.method.semi_supervised` (03): the confidence-masked pseudo-label loss,
  :class:`SemiSupervised`;
* :mod:`~advseg_utils.method.trainer`: :class:`SegmentationTrainer`, what every step shares;
* :mod:`~advseg_utils.method.reduction`: means that stay right on several devices.

A second semi-supervised method is one more module with its own ``losses`` and
``training_batches``; the data layer needs no change.
"""
from advseg_utils.method.adversarial import (
    DISCRIMINATOR_INPUTS,
    Adversarial,
    adversarial_loss,
    discriminator_accuracy,
    discriminator_loss,
    one_hot_with_ignore,
)
from advseg_utils.method.baseline import Baseline, cross_entropy_loss
from advseg_utils.method.reduction import masked_mean, replica_sum
from advseg_utils.method.semi_supervised import (
    SemiSupervised,
    confident_pseudo_labels,
    pseudo_label_accuracy,
    semi_supervised_loss,
)
from advseg_utils.method.trainer import SegmentationTrainer

#: The training model of each ``ExperimentConfig.method``.
METHOD_CLASSES = {"baseline": Baseline, "adversarial": Adversarial, "semi": SemiSupervised}
