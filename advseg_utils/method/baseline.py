# Generated from notebooks/01_baseline.ipynb by tools/export_notebooks.py: edit the notebook, not this file.
"""The baseline of Hung et al. (2018): G trained on labeled images alone, with the pixel-wise
cross-entropy over the pixels whose label is not ``ignore_label``."""
import tensorflow as tf

from advseg_utils.method.reduction import masked_mean
from advseg_utils.method.trainer import SegmentationTrainer


def cross_entropy_loss(labels, logits, ignore_label: int = 255):
    """L_seg: softmax cross-entropy of logits [B, H, W, C] against int labels [B, H, W],
    averaged over the pixels not labelled ``ignore_label``."""
    labels = tf.cast(labels, tf.int32)
    counted = labels != ignore_label
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(counted, labels, 0), logits=tf.cast(logits, tf.float32)
    )
    return masked_mean(per_pixel, counted)


class Baseline(SegmentationTrainer):
    """Supervised training of G: L_seg on batches ``{"image", "label"}`` of labeled crops."""

    batch_keys = ("image", "label")
    log_names = ("loss_seg",)

    def losses(self, batch):
        logits = self.generator(batch["image"], training=True)
        loss_seg = cross_entropy_loss(batch["label"], logits, self.ignore_label)
        return {"generator": loss_seg}, {"loss_seg": loss_seg}

    def evaluation_logs(self, labels, logits):
        return {"loss_seg": cross_entropy_loss(labels, logits, self.ignore_label)}

    @classmethod
    def training_batches(cls, data, labeled_ids, unlabeled=None):
        return lambda step: data.train(step, labeled_ids)
