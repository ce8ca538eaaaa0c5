"""One worker of the loopback clusters tests/test_multiworker.py starts: trains each method a few
iterations on the bundled sample through ``train_model`` (tiny networks: building MobileNetV2
takes a minute on a busy 2-core machine), then writes its final weights and the run's history
to ``--out`` (outside the run folder, which only the chief may write).

Without ``TF_CONFIG`` the same function runs in one process (the tests' reference).
``--die-at k`` kills worker ``--die-worker`` at the start of iteration ``k`` of the semi run.
"""
import argparse
import json
import os
import signal
import sys
from pathlib import Path

import keras
import numpy as np
from keras import layers

from advseg_utils.cluster import worker_index
from advseg_utils.config import ExperimentConfig, configure
from advseg_utils.experiment import load_datasets, split_ids, train_model
from advseg_utils.schedules import paper_optimizers
from advseg_utils.runtime import get_strategy
from advseg_utils.method import METHOD_CLASSES

STEPS, CHECKPOINT_EVERY = 4, 2


def tiny_config(method: str, run_root: Path) -> ExperimentConfig:
    """A few iterations at a global batch of 4, the semi loss on half-way."""
    return ExperimentConfig(
        name=method, method=method, dataset="sample", labeled_fraction=1 if method != "semi" else 0.5,
        split_file=str(run_root / "split.txt"), crop_size=24, batch_size=4, steps=STEPS, semi_start=2,
        checkpoint_dir=str(run_root / method), checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=2,
        precision="float32", seed=3, learning_rate_g=0.01, learning_rate_d=0.01,
    )  # fmt: skip


def tiny_model(config: ExperimentConfig, num_classes: int, strategy) -> keras.Model:
    """What ``build_model`` makes, on networks of two convolutions each (no batch norm: a
    trainable one would normalise each worker's share of the batch on its own)."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        image = keras.Input((None, None, 3))
        features = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Rescaling(1 / 127.5, offset=-1)(image))
        generator = keras.Model(image, layers.Conv2D(num_classes, 1)(features))
        discriminator = None
        if config.adversarial:
            maps = keras.Input((None, None, num_classes))
            hidden = layers.LeakyReLU(0.2)(layers.Conv2D(8, 4, strides=2, padding="same")(maps))
            discriminator = keras.Model(maps, layers.UpSampling2D(2)(layers.Conv2D(1, 1)(hidden)))
        options = {"semi_start": config.semi_start, "t_semi": 0.1} if config.method == "semi" else {}
        model = METHOD_CLASSES[config.method](generator, discriminator, num_classes=num_classes, **options)
        g_optimizer, d_optimizer = paper_optimizers(config.steps, config.learning_rate_g, config.learning_rate_d)
        model.compile(g_optimizer, d_optimizer if discriminator is not None else None)
    return model


class DieAt(keras.callbacks.Callback):
    """SIGKILLs this process when iteration ``step`` is about to start."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.iteration.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_and_record(method: str, run_root: Path, out: Path, strategy, callbacks=()) -> None:
    config = configure(tiny_config(method, run_root), strategy)
    train_set, _ = load_datasets(config)
    labeled, unlabeled = split_ids(config, train_set)
    model = tiny_model(config, train_set.num_classes, strategy)
    history = train_model(model, config, train_set, labeled, unlabeled, verbose=0, callbacks=callbacks)
    name = f"{method}-worker{worker_index(strategy)}"
    networks = [model.generator] + ([model.discriminator] if model.discriminator is not None else [])
    np.savez(out / f"{name}.npz", *[w for network in networks for w in network.get_weights()])
    (out / f"{name}.json").write_text(json.dumps({"history": history, "iteration": int(model.iteration.numpy())}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["baseline", "adversarial", "semi"])
    parser.add_argument("--die-at", type=int, default=None)
    parser.add_argument("--die-worker", type=int, default=1)
    args = parser.parse_args()
    strategy = get_strategy()
    dying = args.die_at is not None and worker_index(strategy) == args.die_worker
    for method in args.methods:
        callbacks = [DieAt(args.die_at)] if dying and method == "semi" else []
        train_and_record(method, args.run_root, args.out, strategy, callbacks)
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
