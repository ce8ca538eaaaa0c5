# Generated from notebooks/02_adversarial.ipynb by tools/export_notebooks.py: edit the notebook, not this file.
"""The adversarial method of Hung et al. (2018): G's segmentation loss plus an adversarial loss
from a fully convolutional discriminator D, trained to tell G's probability maps from label maps."""
import tensorflow as tf

from advseg_utils.method.baseline import Baseline, cross_entropy_loss
from advseg_utils.method.reduction import masked_mean

#: What D can be shown of G's prediction: the paper's softmax maps, or their arg-max as one-hot.
DISCRIMINATOR_INPUTS = ("softmax", "argmax")


def one_hot_with_ignore(labels, num_classes: int, ignore_label: int = 255):
    """float32 one-hot [B, H, W, C] of int labels [B, H, W]; an ignored pixel is all zeros."""
    labels = tf.cast(labels, tf.int32)
    return tf.one_hot(tf.where(labels == ignore_label, -1, labels), num_classes, dtype=tf.float32)


def _bce_with_logits(d_logits, target: float):
    """Per-pixel binary cross-entropy [B, H, W] of D's logits [B, H, W, 1] against a constant."""
    d_logits = tf.cast(tf.squeeze(d_logits, axis=-1), tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(d_logits), target), logits=d_logits)


def adversarial_loss(d_logits, target: float, mask=None):
    """BCE-with-logits of D's logits [B, H, W, 1] against ``target`` (1 real, 0 fake), averaged
    over the ``mask`` pixels [B, H, W] (all pixels when ``mask`` is None)."""
    per_pixel = _bce_with_logits(d_logits, target)
    return masked_mean(per_pixel, tf.ones_like(per_pixel) if mask is None else mask)


def discriminator_loss(fake_logits, fake_masks, real_logits, real_mask):
    """L_D: half the BCE against 0 over all fake pixels (every fake map's mask pixels pooled
    into one mean, as the original concatenates them), half the BCE against 1 over the real
    map's mask pixels."""
    fake_values = tf.concat([tf.reshape(_bce_with_logits(d, 0.0), [-1]) for d in fake_logits], axis=0)
    fake_mask = tf.concat([tf.reshape(m, [-1]) for m in fake_masks], axis=0)
    return 0.5 * masked_mean(fake_values, fake_mask) + 0.5 * adversarial_loss(real_logits, 1.0, real_mask)


def discriminator_accuracy(d_logits, real: bool, mask=None):
    """Share of ``mask`` pixels that D classifies correctly (logit > 0 means "real")."""
    said_real = tf.squeeze(d_logits, axis=-1) > 0
    correct = said_real if real else tf.logical_not(said_real)
    return masked_mean(correct, tf.ones_like(correct) if mask is None else mask)


class Adversarial(Baseline):
    """L_seg + lambda_adv * L_adv for G and L_D for D, on batches ``{"image", "label", "d_label"}``."""

    batch_keys = ("image", "label", "d_label")
    log_names = ("loss_seg", "loss_adv", "loss_d", "d_acc_real", "d_acc_fake")
    options = (*Baseline.options, "lambda_adv", "discriminator_input")

    def __init__(self, generator, discriminator, *, lambda_adv=0.01, discriminator_input="softmax", **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        if discriminator_input not in DISCRIMINATOR_INPUTS:
            raise ValueError(f"discriminator_input={discriminator_input!r}; expected one of {DISCRIMINATOR_INPUTS}")
        self.lambda_adv = lambda_adv
        self.discriminator_input = discriminator_input

    def losses(self, batch):
        logits = self.generator(batch["image"], training=True)
        labeled = batch["label"] != self.ignore_label
        d_fake = self.discriminator(self.shown_to_d(logits), training=True)
        logs = {
            "loss_seg": cross_entropy_loss(batch["label"], logits, self.ignore_label),
            "loss_adv": adversarial_loss(d_fake, 1.0, labeled),
            **self.judge([d_fake], [labeled], batch["d_label"]),
        }
        g_loss = logs["loss_seg"] + self.lambda_adv * logs["loss_adv"]
        return {"generator": g_loss, "discriminator": logs["loss_d"]}, logs

    def shown_to_d(self, logits):
        """What D judges of G's prediction: its softmax, or its arg-max as a one-hot map whose
        gradient is passed straight through to the softmax."""
        probabilities = tf.nn.softmax(logits)
        if self.discriminator_input == "argmax":
            one_hot = tf.one_hot(tf.argmax(probabilities, axis=-1), self.num_classes, dtype=probabilities.dtype)
            return probabilities + tf.stop_gradient(one_hot - probabilities)
        return probabilities

    def judge(self, fake_logits, fake_masks, real_labels):
        """L_D and D's accuracies: D's logits on G's maps against D on the one-hot ``real_labels``."""
        real = real_labels != self.ignore_label
        d_real = self.discriminator(one_hot_with_ignore(real_labels, self.num_classes, self.ignore_label), training=True)
        all_fake = tf.concat([tf.reshape(d, [-1, 1]) for d in fake_logits], axis=0)
        all_masks = tf.concat([tf.reshape(m, [-1]) for m in fake_masks], axis=0)
        return {
            "loss_d": discriminator_loss(fake_logits, fake_masks, d_real, real),
            "d_acc_real": discriminator_accuracy(d_real, real=True, mask=real),
            "d_acc_fake": discriminator_accuracy(all_fake, real=False, mask=all_masks),
        }

    @classmethod
    def training_batches(cls, data, labeled_ids, unlabeled=None):
        def batches(step):
            labeled = data.train(step, labeled_ids)
            real = data.train(step, labeled_ids, stream=2, labels_only=True)  # shuffled on their own
            return tf.data.Dataset.zip((labeled, real)).map(lambda batch, other: {**batch, "d_label": other["label"]})

        return batches
