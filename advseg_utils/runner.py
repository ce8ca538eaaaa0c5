"""Resumable training: checkpoints of the whole training state, and :func:`train`.

A checkpoint holds G, D, both optimisers (slots, iteration counters and therefore the
learning-rate schedules) and the model's iteration counter. The data stream is not saved:
it is rebuilt from the iteration counter, because the data layer's streams are pure
functions of (seed, step) (``VOCGen.train(start_step=...)`` and friends). Calling
:func:`train` again with the same checkpoint directory therefore continues the run exactly
where its newest checkpoint left it, which is what a Colab runtime that disconnects needs.

Checkpoints are written by ``tf.train.CheckpointManager``: the data files first, then the
small state file that names the newest checkpoint, replaced atomically; a save interrupted
half-way (a full disk, a lost Drive mount) leaves the previous checkpoint in charge and stops
training with an ``OSError`` that says so.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from advseg_utils.atomic import atomic_path, write_text_atomically
from advseg_utils.cluster import is_chief, remove_scratch, worker_count, write_dir
from advseg_utils.method.trainer import SegmentationTrainer


def training_checkpoint(model: SegmentationTrainer) -> tf.train.Checkpoint:
    """A ``tf.train.Checkpoint`` of everything a resumed run needs (the model must be compiled)."""
    state = {"generator": model.generator, "g_optimizer": model.g_optimizer, "iteration": model.iteration}
    if model.discriminator is not None:
        state.update(discriminator=model.discriminator, d_optimizer=model.d_optimizer)
    return tf.train.Checkpoint(**state)


def restore_latest(model: SegmentationTrainer, checkpoint_dir: str) -> int:
    """Restores the newest checkpoint in ``checkpoint_dir`` (if any); returns the iteration."""
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is not None:
        training_checkpoint(model).restore(latest).assert_existing_objects_matched()
    return int(model.iteration.numpy())


def save_generator(generator: keras.Model, filepath: str) -> None:
    """Saves ``generator`` as a ``.keras`` file atomically (a temporary file, then a rename):
    a reader never sees a half-written file. A failed save (a full disk) removes the temporary
    file and raises an ``OSError`` naming ``filepath``, whose previous version is untouched.
    A generator with one input reloads with one input on every Keras version (see
    :func:`_single_input_saved_as_such`)."""
    if not filepath.endswith(".keras"):
        raise ValueError(f"generator file {filepath!r} must end with '.keras'")
    try:
        with atomic_path(filepath, suffix=".partial.keras") as partial:  # Keras insists on the extension
            generator.save(partial)
            _single_input_saved_as_such(generator, partial)
    except (OSError, tf.errors.OpError) as error:
        raise OSError(
            f"cannot save the generator to {filepath!r} ({error}); the file there, if any, is unchanged"
        ) from error


def _single_input_saved_as_such(model: keras.Model, keras_file: str) -> None:
    """Rewrites ``keras_file`` so that ``model``'s single input is saved as one input.

    Keras up to 3.10 saves a model built on one input tensor with a list of one input; the
    reloaded model then expects ``[image]`` and Keras 3.10 warns "The structure of `inputs`
    doesn't match the expected structure" whenever it is called on one array. Later versions
    save the single input as such, and then nothing is rewritten. ``keras_file`` is rewritten in
    place: it is the temporary file of an atomic save.
    """
    if not isinstance(model.input, keras.KerasTensor):
        return
    with tempfile.TemporaryFile() as local:  # zipfile writes seekable files; GFile's are not
        with tf.io.gfile.GFile(keras_file, "rb") as source, zipfile.ZipFile(source) as archive:
            config = json.loads(archive.read("config.json"))
            inputs = config["config"]["input_layers"]
            if not (len(inputs) == 1 and isinstance(inputs[0], list)):
                return
            config["config"]["input_layers"] = inputs[0]
            with zipfile.ZipFile(local, "w") as rewritten:
                for entry in archive.infolist():
                    if entry.filename == "config.json":
                        rewritten.writestr(entry, json.dumps(config))
                        continue
                    with archive.open(entry) as data, rewritten.open(entry, "w") as copy:
                        shutil.copyfileobj(data, copy, 1 << 20)
        local.seek(0)
        with tf.io.gfile.GFile(keras_file, "wb") as target:
            shutil.copyfileobj(local, target, 1 << 20)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises ``FloatingPointError`` as soon as a logged loss is NaN or infinite.

    Raising (rather than Keras's ``TerminateOnNaN``, which lets the epoch end) means no
    callback gets to save the broken weights: the newest checkpoint stays the last good one.
    """

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if name.startswith("loss") and not math.isfinite(float(value)):
                raise FloatingPointError(
                    f"{name} is {float(value)} after iteration {int(self.model.iteration.numpy())}: training "
                    "stopped (lower the learning rate, or check the data for NaN pixels)"
                )


class BestGeneratorCheckpoint(keras.callbacks.Callback):
    """Validates every ``every_n_steps`` iterations and keeps the best generator.

    Validation (``model.evaluate`` on ``validation_data``: ``mean_iou``, ``loss_seg`` on whole
    images) runs at the first epoch end at or after each multiple of ``every_n_steps``; its
    results join the epoch's logs as ``val_mean_iou`` and ``val_loss_seg`` (so History,
    TensorBoard and ReduceLROnPlateau listed after this callback see them). When the mean IoU
    beats the best so far, the generator is saved to ``filepath`` (a ``.keras`` file, atomically)
    and the score to ``filepath + ".json"``, which a resumed run reads back.
    """

    def __init__(self, validation_data, filepath: str, every_n_steps: int, verbose: int = 1):
        super().__init__()
        self.validation_data = validation_data
        self.filepath = filepath
        self.every_n_steps = every_n_steps
        self.verbose = verbose
        self.best = -math.inf

    @property
    def _score_path(self) -> str:
        return self.filepath + ".json"

    def on_train_begin(self, logs=None):
        if tf.io.gfile.exists(self._score_path):
            with tf.io.gfile.GFile(self._score_path) as f:
                self.best = json.load(f)["mean_iou"]
        self._next_step = (int(self.model.iteration.numpy()) // self.every_n_steps + 1) * self.every_n_steps

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.iteration.numpy())
        if step < self._next_step:
            return
        self._next_step = (step // self.every_n_steps + 1) * self.every_n_steps
        results = self.model.evaluate(self.validation_data, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in results.items()})
        score = float(results["mean_iou"])
        improved = score > self.best
        if improved:
            self.best = score
            save_generator(self.model.generator, self.filepath)
            write_text_atomically(self._score_path, json.dumps({"step": step, "mean_iou": score}))
        if self.verbose:
            note = f"saved to {self.filepath}" if improved else f"best {self.best:.4f}"
            print(f"iteration {step}: validation mean IoU {score:.4f} ({note})")


class _SaveCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint at every epoch end (after refusing non-finite weights)."""

    def __init__(self, manager: tf.train.CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.iteration.numpy())
        networks = [self.model.generator, self.model.discriminator]
        if not all(np.isfinite(w).all() for n in networks if n is not None for w in n.get_weights()):
            raise FloatingPointError(f"weights not finite after iteration {step}: training stopped, not saved")
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            raise OSError(
                f"cannot write the checkpoint of iteration {step} to {self.manager.directory!r} ({error}): "
                f"is the disk full? Training stopped; {_resume_point(self.manager.directory)}"
            ) from error


class _StopAtStep(keras.callbacks.Callback):
    """Ends training once the model's iteration reaches ``total_steps``."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.iteration.numpy()) >= self.total_steps:
            self.model.stop_training = True


def train(
    model: SegmentationTrainer,
    make_dataset: Callable[[int], tf.data.Dataset],
    total_steps: int,
    checkpoint_dir: str,
    *,
    checkpoint_every: int = 1000,
    keep: int = 3,
    validation_data: tf.data.Dataset | None = None,
    validate_every: int | None = None,
    best_generator_path: str | None = None,
    callbacks: Iterable[keras.callbacks.Callback] = (),
    log_dir: str | None = None,
    verbose: str | int = "auto",
) -> keras.callbacks.History:
    """Trains a compiled ``model`` to ``total_steps`` iterations, resuming from the newest
    checkpoint in ``checkpoint_dir`` if there is one.

    ``make_dataset(step)`` must return the training stream positioned at iteration ``step``
    (e.g. ``SemiSupervised.training_batches(gen, labeled, unlabeled)``). Keras
    epochs are chunks of ``checkpoint_every`` iterations; a checkpoint (the last ``keep`` are
    kept) is written at the end of each. With ``validation_data``, the generator is validated
    every ``validate_every`` iterations (rounded up to a chunk end; default: every chunk) and
    the best one saved to ``best_generator_path`` (default ``<checkpoint_dir>/best_generator.keras``).
    ``log_dir`` adds TensorBoard logs. A NaN or infinite loss raises ``FloatingPointError``
    and leaves the last good checkpoint as the newest. Returns this call's History (the
    epochs run now, not those before a resume).

    Across workers (:mod:`advseg_utils.cluster`) every worker restores from ``checkpoint_dir``
    and saves (saving is collective), but only the chief saves there and writes TensorBoard
    logs; the others save to a scratch folder, removed when this call ends.
    """
    if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
        raise ImportError(f"log_dir={log_dir!r} needs the tensorboard package (pip install tensorboard)")
    strategy = model.distribute_strategy
    if validation_data is not None and worker_count(strategy) > 1:
        raise ValueError(
            f"validation during training runs on one machine only, not across {worker_count(strategy)} workers: "
            "pass validation_data=None (validate_every=None) and evaluate the generator after training"
        )
    remove_scratch(checkpoint_dir, strategy)  # left by a worker that was killed
    _check_writable(write_dir(checkpoint_dir, strategy))
    manager = tf.train.CheckpointManager(
        training_checkpoint(model), write_dir(checkpoint_dir, strategy), max_to_keep=keep
    )
    step = restore_latest(model, checkpoint_dir)
    if step >= total_steps:
        print(f"{checkpoint_dir} holds iteration {step} >= total_steps={total_steps}: nothing to train")
        remove_scratch(checkpoint_dir, strategy)
        return keras.callbacks.History()
    if step:
        print(f"resuming from {manager.latest_checkpoint} at iteration {step}")
    all_callbacks = [StopOnNonFiniteLoss(), _StopAtStep(total_steps)]
    if validation_data is not None:
        path = best_generator_path or os.path.join(checkpoint_dir, "best_generator.keras")
        every = validate_every or checkpoint_every
        all_callbacks.append(BestGeneratorCheckpoint(validation_data, path, every))
    all_callbacks += [*callbacks, _SaveCheckpoint(manager)]
    if log_dir is not None and is_chief(strategy):
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir))
    first_epoch = step // checkpoint_every
    try:
        return model.fit(
            make_dataset(step).with_options(_sharded_by_element()),
            steps_per_epoch=checkpoint_every,
            initial_epoch=first_epoch,
            epochs=first_epoch + math.ceil((total_steps - step) / checkpoint_every),
            callbacks=all_callbacks,
            shuffle=False,
            verbose=verbose,
        )
    except FloatingPointError as error:
        raise FloatingPointError(f"{error}; {_resume_point(checkpoint_dir)}") from error
    finally:
        remove_scratch(checkpoint_dir, strategy)


def _sharded_by_element() -> tf.data.Options:
    """Across workers, each takes its share of every global batch, so that batch k stays a
    function of (seed, k): sharding by element, as the data layer reads files inside ``map``,
    not with a file-reading dataset that Keras could shard by file."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _resume_point(checkpoint_dir: str) -> str:
    """Which checkpoint a new call to :func:`train` resumes from, read from the state file on disk."""
    newest = tf.train.latest_checkpoint(checkpoint_dir)
    if newest is None:
        return "no checkpoint was written yet, so a new call starts from scratch"
    return f"the newest checkpoint, {newest}, is the last good state, and a new call resumes from it"


def _check_writable(directory: str) -> None:
    """Fails before training, naming the directory, when checkpoints cannot be written there."""
    probe = os.path.join(directory, ".advseg_write_test")
    try:
        tf.io.gfile.makedirs(directory)
        write_text_atomically(probe, "ok")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as error:
        raise PermissionError(
            f"cannot write checkpoints to {directory!r} ({error}); pass a writable checkpoint_dir "
            "(in Colab, e.g. a folder of the mounted Google Drive)"
        ) from error


class HistoryLog(keras.callbacks.Callback):
    """Keeps every epoch's logs in a JSON file keyed by iteration, so that the loss curves of a
    run interrupted and resumed (whose Keras History holds only the epochs since the restart)
    are complete; an epoch trained again after a restart replaces its first record.

    Across workers only the chief writes the file; every worker keeps the same records (the
    logs are global) in memory, read from the file when training begins.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = str(path)
        self._records: dict[int, dict[str, float]] | None = None  # None: read the file

    def records(self) -> dict[int, dict[str, float]]:
        if self._records is not None:
            return dict(self._records)
        if not tf.io.gfile.exists(self.path):
            return {}
        with tf.io.gfile.GFile(self.path) as f:
            return {int(iteration): logs for iteration, logs in json.load(f).items()}

    def on_train_begin(self, logs=None):
        self._records = None
        self._records = self.records()

    def history(self) -> dict[str, list[float]]:
        """``{name: [value per recorded epoch, by iteration]}``; NaN where an epoch lacks a value."""
        records = [logs for _, logs in sorted(self.records().items())]
        names = sorted({name for logs in records for name in logs})
        return {name: [logs.get(name, math.nan) for logs in records] for name in names}

    def on_epoch_end(self, epoch, logs=None):
        records = self.records()
        records[int(self.model.iteration.numpy())] = {name: float(value) for name, value in (logs or {}).items()}
        self._records = records
        if not is_chief(self.model.distribute_strategy):
            return
        write_text_atomically(self.path, json.dumps({str(it): values for it, values in sorted(records.items())}))
