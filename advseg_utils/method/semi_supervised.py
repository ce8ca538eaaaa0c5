# Generated from notebooks/03_semi_supervised.ipynb by tools/export_notebooks.py: edit the notebook, not this file.
"""The semi-supervised method of Hung et al. (2018): the adversarial method plus unlabeled
images, an adversarial loss on them and a cross-entropy against G's own predictions where D's
confidence map trusts them."""
import tensorflow as tf

from advseg_utils.datasets import SegDataset
from advseg_utils.method.adversarial import Adversarial, adversarial_loss
from advseg_utils.method.baseline import cross_entropy_loss
from advseg_utils.method.reduction import masked_mean


def confident_pseudo_labels(logits, d_logits, t_semi: float, ignore_label: int = 255):
    """(labels int32 [B, H, W]: G's arg-max where sigmoid(D) > ``t_semi``, else ``ignore_label``;
    confident bool [B, H, W]). Both are constants: no gradient flows through them."""
    confidence = tf.sigmoid(tf.cast(tf.squeeze(tf.stop_gradient(d_logits), axis=-1), tf.float32))
    confident = confidence > t_semi
    prediction = tf.argmax(tf.stop_gradient(logits), axis=-1, output_type=tf.int32)
    return tf.where(confident, prediction, ignore_label), confident


def semi_supervised_loss(logits, d_logits, t_semi: float, ignore_label: int = 255):
    """(L_semi, ``semi_ratio``: the share of pixels above ``t_semi``): the cross-entropy of G's
    unlabeled logits against their own confident pseudo-labels."""
    pseudo_labels, confident = confident_pseudo_labels(logits, d_logits, t_semi, ignore_label)
    semi_ratio = masked_mean(confident, tf.ones_like(confident))
    return cross_entropy_loss(pseudo_labels, logits, ignore_label), semi_ratio


def pseudo_label_accuracy(true_labels, logits, d_logits, t_semi: float, ignore_label: int = 255):
    """A diagnostic, not a loss, where the unlabeled images' true labels happen to be known:
    (the accuracy of G's arg-max over every pixel with a true label, the same over the pixels
    D's confidence keeps). If D's confidence is informative the second is the higher."""
    _, confident = confident_pseudo_labels(logits, d_logits, t_semi, ignore_label)
    true_labels = tf.cast(true_labels, tf.int32)
    counted = true_labels != ignore_label
    correct = tf.argmax(tf.stop_gradient(logits), axis=-1, output_type=tf.int32) == true_labels
    return masked_mean(correct, counted), masked_mean(correct, counted & confident)


class SemiSupervised(Adversarial):
    """The full method, on batches ``{"image", "label", "unlabeled_image", "d_label"}`` (and
    ``"unlabeled_label"``, logged against and never learnt from, where the unlabeled images have
    labels)."""

    batch_keys = (*Adversarial.batch_keys, "unlabeled_image")
    log_names = (*Adversarial.log_names, "loss_semi_adv", "loss_semi", "semi_ratio", "pseudo_acc_all", "pseudo_acc_kept")
    options = (*Adversarial.options, "lambda_semi_adv", "lambda_semi", "t_semi", "semi_start")

    def __init__(self, generator, discriminator, *, lambda_semi_adv=0.001, lambda_semi=0.1, t_semi=0.2, semi_start=5000, **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        self.lambda_semi_adv, self.lambda_semi = lambda_semi_adv, lambda_semi
        self.t_semi, self.semi_start = t_semi, semi_start

    def losses(self, batch):
        logits = self.generator(batch["image"], training=True)
        logits_u = self.generator(batch["unlabeled_image"], training=True)
        labeled = batch["label"] != self.ignore_label
        everywhere = tf.ones_like(logits_u[..., 0], dtype=tf.bool)
        d_fake = self.discriminator(self.shown_to_d(logits), training=True)
        d_fake_u = self.discriminator(self.shown_to_d(logits_u), training=True)
        loss_semi, semi_ratio = semi_supervised_loss(logits_u, d_fake_u, self.t_semi, self.ignore_label)
        semi_on = tf.cast(self.iteration >= self.semi_start, tf.float32)
        logs = {
            "loss_seg": cross_entropy_loss(batch["label"], logits, self.ignore_label),
            "loss_adv": adversarial_loss(d_fake, 1.0, labeled),
            "loss_semi_adv": adversarial_loss(d_fake_u, 1.0),
            "loss_semi": semi_on * loss_semi,
            "semi_ratio": semi_ratio,
            **self.judge([d_fake, d_fake_u], [labeled, everywhere], batch["d_label"]),
        }
        if "unlabeled_label" in batch:  # diagnostics only: these labels reach no loss
            logs["pseudo_acc_all"], logs["pseudo_acc_kept"] = pseudo_label_accuracy(
                batch["unlabeled_label"], logits_u, d_fake_u, self.t_semi, self.ignore_label
            )
        g_loss = logs["loss_seg"] + self.lambda_adv * logs["loss_adv"]
        g_loss += self.lambda_semi_adv * logs["loss_semi_adv"] + self.lambda_semi * logs["loss_semi"]
        return {"generator": g_loss, "discriminator": logs["loss_d"]}, logs

    @classmethod
    def training_batches(cls, data, labeled_ids, unlabeled=None):
        """``unlabeled``: ids of ``data``'s dataset, or a dataset of unlabeled images; where all
        of them have masks, these come along as ``"unlabeled_label"``."""
        with_labels = isinstance(unlabeled, SegDataset) and unlabeled.labeled
        adversarial = super().training_batches(data, labeled_ids)

        def batches(step):
            images = data.unlabeled(step, unlabeled, with_labels=with_labels)

            def combine(batch, other):
                extra = {"unlabeled_label": other["label"]} if with_labels else {}
                return {**batch, "unlabeled_image": other["image"], **extra}

            return tf.data.Dataset.zip((adversarial(step), images)).map(combine)

        return batches
