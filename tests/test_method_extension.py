"""A second semi-supervised method beside the paper's, written here with the public pieces only:
a SegmentationTrainer subclass, the methods' loss functions and VOCGen's generic streams. It
trains, resumes and evaluates through the same runner, with no change to the data layer."""
import keras
import numpy as np
import tensorflow as tf
from keras import layers

from advseg_utils.datasets import sample_dataset
from advseg_utils.method import Baseline, cross_entropy_loss
from advseg_utils.runner import train
from advseg_utils.voc_gen import VOCGen


class ConfidentSelfTraining(Baseline):
    """Self-training without a discriminator: pseudo-labels where G's own top probability
    exceeds ``threshold`` (the paper's confidence map replaced by G's)."""

    batch_keys = ("image", "label", "unlabeled_image")
    log_names = ("loss_seg", "loss_pseudo", "kept")
    threshold = 0.5

    def losses(self, batch):
        logits = self.generator(batch["image"], training=True)
        logits_u = self.generator(batch["unlabeled_image"], training=True)
        probabilities = tf.stop_gradient(tf.nn.softmax(logits_u))
        kept = tf.reduce_max(probabilities, axis=-1) > self.threshold
        pseudo = tf.where(kept, tf.argmax(probabilities, axis=-1, output_type=tf.int32), self.ignore_label)
        logs = {
            "loss_seg": cross_entropy_loss(batch["label"], logits, self.ignore_label),
            "loss_pseudo": cross_entropy_loss(pseudo, logits_u, self.ignore_label),
            "kept": tf.reduce_mean(tf.cast(kept, tf.float32)),
        }
        return {"generator": logs["loss_seg"] + 0.1 * logs["loss_pseudo"]}, logs

    @classmethod
    def training_batches(cls, data, labeled_ids, unlabeled=None):
        def batches(step):
            pairs = tf.data.Dataset.zip((data.train(step, labeled_ids), data.unlabeled(step, unlabeled)))
            return pairs.map(lambda batch, other: {**batch, "unlabeled_image": other["image"]})

        return batches


def tiny_generator(num_classes: int) -> keras.Model:
    images = keras.Input((None, None, 3))
    hidden = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Rescaling(1 / 127.5, offset=-1)(images))
    return keras.Model(images, layers.Conv2D(num_classes, 1)(hidden))


def test_a_second_semi_supervised_method_trains_on_the_unchanged_data_layer(tmp_path):
    dataset = sample_dataset("train")
    labeled, unlabeled = list(dataset.ids[:6]), list(dataset.ids[6:])
    stream = ConfidentSelfTraining.training_batches(VOCGen(dataset, crop_size=(32, 32), batch_size=2), labeled, unlabeled)
    batch = next(iter(stream(0)))
    assert set(batch) == {"image", "label", "unlabeled_image"}

    def run(steps: int) -> ConfidentSelfTraining:
        keras.utils.set_random_seed(0)
        model = ConfidentSelfTraining(tiny_generator(dataset.num_classes), num_classes=dataset.num_classes)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9))
        train(model, stream, steps, str(tmp_path / "run"), checkpoint_every=2, verbose=0)
        return model

    first = run(2)
    history = first.history.history
    assert set(history) == {"loss", "loss_seg", "loss_pseudo", "kept"}
    assert all(np.isfinite(history[name][-1]) for name in history)
    resumed = run(4)  # continues from the checkpoint of iteration 2
    assert int(resumed.iteration.numpy()) == 4
    evaluation = VOCGen(sample_dataset("val")).evaluation()
    assert 0.0 <= resumed.evaluate(evaluation, verbose=0, return_dict=True)["mean_iou"] <= 1.0
