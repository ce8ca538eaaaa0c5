"""One experiment, from its configuration to its mean IoU: the steps the notebooks call one by
one, and :func:`run_experiment`, which chains the very same calls for scripts.

* data: :func:`load_datasets` (fetches PASCAL VOC and SBD when absent), :func:`split_ids`
  (the labeled/unlabeled split, written to a file and reused), :func:`load_unlabeled` (folders
  of images nobody labeled), :func:`examples`;
* networks: :func:`build_model` (G, D and the compiled training model of :mod:`advseg_utils.method`);
* training: :func:`train_model` (resumable, TensorBoard logs, a loss history that survives
  restarts).

The configuration is :mod:`advseg_utils.config`'s, the environment :mod:`advseg_utils.runtime`'s.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from advseg_utils.cluster import is_chief
from advseg_utils.config import ExperimentConfig
from advseg_utils.datasets import (
    SegDataset,
    camvid_dataset,
    cityscapes_dataset,
    folder_dataset,
    sample_dataset,
    validate_dataset,
    voc_dataset,
)
from advseg_utils.file_utils import (
    UnlabeledSources,
    get_or_create_split,
    load_img,
    load_mask,
    load_unlabeled_sources,
    make_split,
    save_split,
)
from advseg_utils.inference import Segmenter, evaluate, recalibrate_batchnorm
from advseg_utils.method import METHOD_CLASSES, SegmentationTrainer
from advseg_utils.models import build_discriminator, build_generator
from advseg_utils.monitoring import DiscriminatorMonitor
from advseg_utils.runner import HistoryLog, train
from advseg_utils.runtime import configure_precision, get_strategy
from advseg_utils.schedules import paper_optimizers
from advseg_utils.unlabeled import merge_unlabeled, unlabeled_folder_dataset
from advseg_utils.voc_gen import VOCGen

HISTORY_FILE = "history.json"


# --- data ----------------------------------------------------------------------------------


def load_datasets(config: ExperimentConfig) -> tuple[SegDataset, SegDataset]:
    """The (train, val) datasets the configuration names, downloading VOC and SBD, or CamVid,
    when absent."""
    name, root = config.dataset, Path(config.data_dir)
    if name == "sample":
        return sample_dataset("train"), sample_dataset("val")
    if name in ("voc", "voc_aug"):
        from advseg_utils.download import download_voc  # network code only when VOC is asked for
        from advseg_utils.prepare import prepare_voc

        if name == "voc_aug":
            voc_root = prepare_voc(root)
            return voc_dataset(voc_root, "train_aug"), voc_dataset(voc_root, "val")
        voc_root = download_voc(root)
        return voc_dataset(voc_root, "train"), voc_dataset(voc_root, "val")
    if name == "camvid":
        from advseg_utils.prepare import download_camvid

        download_camvid(root)  # returns at once when train.txt and val.txt are there
        return camvid_dataset(root, "train"), camvid_dataset(root, "val")
    if name == "cityscapes":
        return cityscapes_dataset(root, "train"), cityscapes_dataset(root, "val")
    options = dict(config.folder_options)
    val_options = options.pop("val", {})
    return folder_dataset(root, **options), folder_dataset(root, **{**options, **val_options})


def split_ids(config: ExperimentConfig, train_set: SegDataset) -> tuple[list[str], list[str]]:
    """(labeled ids, unlabeled ids) of ``train_set``: every id and none with all labels, else the
    split saved at :attr:`ExperimentConfig.split_path` (written on first use, reused and checked
    afterwards). A semi-supervised run's split file also records its extra unlabeled images
    (:func:`load_unlabeled`): updated while the run folder holds no checkpoint, refused once
    one exists and they changed; with ``unlabeled_dirs`` it is written even with all labels. Across workers only the chief writes it; the others draw the
    same split without writing."""
    extra = load_unlabeled(config)
    if config.labeled_fraction == 1 and extra is None:
        return list(train_set.ids), []
    sources = None
    if config.method == "semi":
        sources = UnlabeledSources(
            folders=config.unlabeled_dirs,
            video_every=config.video_every,
            video_max_frames=config.video_max_frames,
            ids=extra.ids if extra is not None else (),
        )
    path = config.split_path
    existed = path.exists()
    if not existed and not is_chief():
        return make_split(list(train_set.ids), config.labeled_fraction, config.seed)
    # Until the run has a checkpoint there is nothing to resume: the record follows the folders
    # (a corrupt file named by validate_dataset and then removed, say); afterwards it must match.
    follow = sources is not None and is_chief() and tf.train.latest_checkpoint(str(config.run_dir)) is None
    labeled, unlabeled = get_or_create_split(
        path, train_set.ids, config.labeled_fraction, config.seed, None if follow else sources
    )
    if follow and load_unlabeled_sources(path).differences(sources):
        save_split(path, labeled, unlabeled, fraction=config.labeled_fraction, seed=config.seed, sources=sources)
    more = f" (+ {len(extra)} from {', '.join(config.unlabeled_dirs)})" if extra is not None else ""
    print(f"{'reused' if existed else 'wrote'} the split {path}: {len(labeled)} labeled, {len(unlabeled)}{more} unlabeled images")
    return labeled, unlabeled


def load_unlabeled(config: ExperimentConfig) -> SegDataset | None:
    """The images of ``config.unlabeled_dirs`` (None without any), frames sampled from their
    videos included (written once to :attr:`ExperimentConfig.video_frames_dir`):
    :func:`~advseg_utils.unlabeled.unlabeled_folder_dataset`."""
    if not config.unlabeled_dirs:
        return None
    return unlabeled_folder_dataset(
        *config.unlabeled_dirs,
        video_every=config.video_every,
        video_max_frames=config.video_max_frames,
        cache_dir=config.video_frames_dir,
    )


def unlabeled_training_set(
    train_set: SegDataset, unlabeled_ids: Sequence[str], extra: SegDataset | None = None
) -> SegDataset:
    """The images the semi-supervised method learns from without labels: ``train_set``'s
    ``unlabeled_ids``, then the ``extra`` ones (:func:`load_unlabeled`). Their masks come along
    only when every image has one (then they feed the pseudo-label accuracy logs, no loss)."""
    parts = ([train_set.subset(unlabeled_ids)] if len(unlabeled_ids) else []) + ([extra] if extra is not None else [])
    if not parts:
        raise ValueError(
            "method='semi' needs unlabeled images: the second list of split_ids(config, train_set), "
            "or folders of unlabeled images in ExperimentConfig.unlabeled_dirs"
        )
    return merge_unlabeled(*parts, name=f"{train_set.name}-unlabeled")


def examples(
    dataset: SegDataset, count: int, ids: Sequence[str] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """``count`` evenly spread (images uint8 [H, W, 3], masks uint8 [H, W] or None when the
    dataset has no masks), from ``ids`` when given."""
    dataset = dataset if ids is None else dataset.subset(ids)
    picked = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    images = [load_img(dataset.image_paths[i]) for i in picked]
    if dataset.mask_paths is None:
        return images, None
    return images, [load_mask(dataset.mask_paths[i], dataset.label_remap) for i in picked]


# --- networks ------------------------------------------------------------------------------


def build_model(
    config: ExperimentConfig,
    train_set: SegDataset,
    strategy: tf.distribute.Strategy | None = None,
    method: type[SegmentationTrainer] | None = None,
    make_generator: Callable[..., keras.Model] = build_generator,
    make_discriminator: Callable[..., keras.Model] = build_discriminator,
) -> SegmentationTrainer:
    """G (and D unless the method is the baseline) in the compiled training model, with the
    paper's optimisers decayed over ``config.steps``, built under ``strategy`` with the
    configured precision; initial weights depend on ``config.seed`` only.

    ``method`` is the training model's class (default: :data:`METHOD_CLASSES`\ ``[config.method]``);
    ``make_generator`` and ``make_discriminator`` build the networks. A notebook passes the ones
    its cells define, so that a change made there is the one that trains. The method's
    constructor receives the configuration's values of the options it names (``method.options``).
    """
    strategy = strategy or tf.distribute.get_strategy()
    method = method or METHOD_CLASSES[config.method]
    configure_precision(config.precision, strategy)
    keras.utils.set_random_seed(config.seed)
    num_classes = train_set.num_classes
    with strategy.scope():
        generator = make_generator(
            num_classes, config.backbone, config.head, config.weights, config.output_stride, config.freeze_batchnorm
        )
        discriminator = make_discriminator(num_classes, config.discriminator) if config.adversarial else None
        options = {name: getattr(config, name) for name in method.options}
        model = method(generator, discriminator, num_classes=num_classes, ignore_label=train_set.ignore_label, **options)
        g_optimizer, d_optimizer = paper_optimizers(config.steps, config.learning_rate_g, config.learning_rate_d)
        model.compile(g_optimizer, d_optimizer if discriminator is not None else None, jit_compile=config.jit_compile)
    return model


# --- training ------------------------------------------------------------------------------


def training_stream(
    config: ExperimentConfig,
    train_set: SegDataset,
    labeled_ids: Sequence[str],
    unlabeled_ids: Sequence[str] = (),
    method: type[SegmentationTrainer] | None = None,
) -> Callable[[int], tf.data.Dataset]:
    """``step -> dataset`` of the method's training batches (its ``training_batches``; default
    method: :data:`METHOD_CLASSES`\ ``[config.method]``), positioned at iteration ``step``; the
    semi-supervised method's unlabeled images are :func:`unlabeled_training_set`'s."""
    method = method or METHOD_CLASSES[config.method]
    data = VOCGen(train_set, crop_size=(config.crop_size, config.crop_size), batch_size=config.batch_size, seed=config.seed)
    unlabeled = None
    if config.method == "semi":
        unlabeled = unlabeled_training_set(train_set, unlabeled_ids, load_unlabeled(config))
    return method.training_batches(data, labeled_ids, unlabeled)


def train_model(
    model: SegmentationTrainer,
    config: ExperimentConfig,
    train_set: SegDataset,
    labeled_ids: Sequence[str],
    unlabeled_ids: Sequence[str] = (),
    val_set: SegDataset | None = None,
    verbose: str | int = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Trains to ``config.steps`` iterations, continuing from the newest checkpoint in the run
    folder, and returns the whole run's history (one value per ``checkpoint_every`` iterations,
    also the chunks trained before a restart).

    Writes TensorBoard logs to :attr:`ExperimentConfig.log_dir` unless ``config.tensorboard`` is
    off. With ``val_set`` and ``config.validate_every``, validates during training and
    keeps the best generator in the run folder. ``callbacks`` join the training's own.
    """
    # tensorboard is a dependency; runner.train names it should it be missing anyway
    log_dir = str(config.log_dir) if config.tensorboard else None
    validation = None
    if val_set is not None and config.validate_every:
        validation = VOCGen(val_set).evaluation()
    history_log = HistoryLog(config.run_dir / HISTORY_FILE)
    monitors = [DiscriminatorMonitor()] if config.adversarial else []  # warns when D has won or learns nothing
    stream = training_stream(config, train_set, labeled_ids, unlabeled_ids, type(model))
    train(
        model,
        stream,
        config.steps,
        str(config.run_dir),
        checkpoint_every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        validation_data=validation,
        validate_every=config.validate_every,
        callbacks=[history_log, *monitors, *callbacks],
        log_dir=log_dir,
        verbose=verbose,
    )
    if config.recalibrate_batchnorm:
        recalibrate_on_training_crops(model.generator, stream, config.recalibrate_batchnorm)
    return history_log.history()


def recalibrate_on_training_crops(generator: keras.Model, stream: Callable[[int], tf.data.Dataset], crops: int) -> None:
    """Sets the moving statistics of G's trained batch norms to those of the first ``crops``
    labeled crops of the training ``stream`` (:func:`training_stream`), in one forward pass:
    "precise BN" (:func:`~advseg_utils.inference.recalibrate_batchnorm`). No weight changes;
    the same weights and crops always give the same statistics, so a resumed run recalibrates
    to what an uninterrupted one does."""
    batches = iter(stream(0))
    first = next(batches)["image"]
    images = [first] + [next(batches)["image"] for _ in range(-(-crops // int(first.shape[0])) - 1)]
    recalibrate_batchnorm(generator, tf.concat(images, axis=0)[:crops])


# --- the whole experiment ----------------------------------------------------------------------


def run_experiment(
    config: ExperimentConfig, strategy: tf.distribute.Strategy | None = None, verbose: str | int = 0
) -> dict[str, Any]:
    """Data -> networks -> training -> evaluation, with the functions the notebooks call.

    Returns a JSON-ready dict: the configuration, the iteration reached, the last value of
    every logged loss, the history, and the evaluation on the validation set (mean IoU, pixel
    accuracy, per-class IoU). Resumes from ``config.run_dir`` like the notebooks do. The extra
    unlabeled images of ``config.unlabeled_dirs`` are validated first (a file that cannot be
    decoded is named before training).
    """
    strategy = strategy or get_strategy()
    train_set, val_set = load_datasets(config)
    labeled_ids, unlabeled_ids = split_ids(config, train_set)
    extra = load_unlabeled(config)
    if extra is not None:
        validate_dataset(extra, max_decoded=config.validate_decoded)
    model = build_model(config, train_set, strategy)
    history = train_model(model, config, train_set, labeled_ids, unlabeled_ids, val_set, verbose=verbose)
    result = evaluate(Segmenter(model.generator), val_set, progress=bool(verbose))
    return {
        "config": dataclasses.asdict(config),
        "iteration": int(model.iteration.numpy()),
        "labeled_images": len(labeled_ids),
        "unlabeled_images": len(unlabeled_ids),
        "extra_unlabeled_images": len(extra) if extra is not None else 0,
        "final_logs": {name: values[-1] for name, values in history.items()},
        "history": history,
        **result.as_dict(),
    }
