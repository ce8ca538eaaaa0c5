"""What the CamVid quality tables train: their rows (:data:`SETTINGS`), the profiles that share
a configuration, length, seeds and results folder (:data:`PROFILES`), each run's
:class:`ExperimentConfig` and the command line that reproduces it.

The choices behind each profile are explained in ``quality_camvid.py``'s docstring (its
``--help``) and in benchmarks/README.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from advseg_utils import ExperimentConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = PROJECT_ROOT / "benchmarks" / "results"
#: The command-line script, as the tables and result files name it.
SCRIPT = "benchmarks/quality_camvid.py"
SEEDS = (0, 1)
SEMI_START_FRACTION = 0.5


#: The labeled shares of the tables, as the paper's tables write them.
FRACTIONS = {1 / 32: "1/32", 1 / 16: "1/16", 1 / 8: "1/8", 1 / 4: "1/4", 1.0: "all"}


@dataclass(frozen=True)
class Setting:
    """One row of the table: a method and the share of the training labels it gets."""

    method: str
    labeled_fraction: float

    @property
    def labels(self) -> str:
        return FRACTIONS[self.labeled_fraction]


SETTINGS = {
    "baseline-1of32": Setting("baseline", 1 / 32),
    "adversarial-1of32": Setting("adversarial", 1 / 32),
    "semi-1of32": Setting("semi", 1 / 32),
    "baseline-1of16": Setting("baseline", 1 / 16),
    "adversarial-1of16": Setting("adversarial", 1 / 16),
    "semi-1of16": Setting("semi", 1 / 16),
    "baseline-1of8": Setting("baseline", 1 / 8),
    "adversarial-1of8": Setting("adversarial", 1 / 8),
    "semi-1of8": Setting("semi", 1 / 8),
    "baseline-1of4": Setting("baseline", 1 / 4),
    "adversarial-1of4": Setting("adversarial", 1 / 4),
    "semi-1of4": Setting("semi", 1 / 4),
    "baseline-all": Setting("baseline", 1.0),
    "adversarial-all": Setting("adversarial", 1.0),
}
METHOD_LABELS = {"baseline": "baseline", "adversarial": "+ adversarial", "semi": "+ adversarial + semi"}
#: The random-weights tables' rows (CPU and GPU): 1/8, 1/4 and all labels.
FROM_SCRATCH_SETTINGS = tuple(name for name in SETTINGS if SETTINGS[name].labeled_fraction in (1 / 8, 1 / 4, 1.0))
#: The ImageNet table's rows: fractions with headroom (1/32, 1/16) and the paper's 1/8, and all
#: labels; in the order they are trained (the all-labels baseline first: every headroom needs it,
#: then the baselines, then the methods), so that an interrupted table is the most useful.
IMAGENET_SETTINGS = (
    "baseline-all", "baseline-1of32", "baseline-1of16", "baseline-1of8", "semi-1of32", "semi-1of16", "semi-1of8",
    "adversarial-1of32", "adversarial-1of16", "adversarial-1of8", "adversarial-all",
)  # fmt: skip

#: Everything that differs from ExperimentConfig's defaults, for every setting of the CPU table
#: (see quality_camvid.py's docstring). ``recalibrate_batchnorm``: run_experiment re-estimates
#: G's batch-norm statistics on 64 training crops before its evaluation ("precise BN"), since
#: MobileNetV2's moving averages still hold mostly their initial values after a short run.
BASE_CONFIG = ExperimentConfig(
    dataset="camvid",
    crop_size=128,
    batch_size=8,
    validate_decoded=None,
    backbone="mobilenet_v2",
    head="deeplabv3plus",
    weights=None,
    freeze_batchnorm=False,
    discriminator="small",
    learning_rate_g=0.05,
    head_lr_multiplier=1.0,
    precision="float32",
    checkpoint_every=100,
    keep_checkpoints=1,
    tensorboard=False,
    recalibrate_batchnorm=64,
)


@dataclass(frozen=True)
class Profile:
    """What every run of one table shares: CamVid's size (width, height), the configuration
    beyond the setting and seed, the default length, the folder of its results, its rows and
    seeds, when the semi-supervised loss starts (a share of the run), and the profile whose
    baseline runs this table shows as its own (they train no D, so a variant of D needs no
    baselines of its own)."""

    name: str
    image_size: tuple[int, int]
    base_config: ExperimentConfig
    steps: int
    results_dir: Path
    settings: tuple[str, ...] = FROM_SCRATCH_SETTINGS
    seeds: tuple[int, ...] = SEEDS
    semi_start_fraction: float = SEMI_START_FRACTION
    baselines_from: str | None = None

    @property
    def setup(self) -> str:
        """The table's and the plot's title."""
        c = self.base_config
        start = "from scratch" if c.weights is None else f"from {c.weights} weights"
        return (
            f"CamVid {self.image_size[0]}x{self.image_size[1]}, {c.head} on {c.backbone} {start}, "
            f"crops {c.crop_size}, batch {c.batch_size}, {c.precision}{', XLA' if c.jit_compile else ''}"
            + (f", D on G's {c.discriminator_input}" if c.discriminator_input != "softmax" else "")
        )


PROFILES = {
    # The 2-core CPU: half-size CamVid, small crops, 400 iterations (the docstring says why).
    "cpu": Profile("cpu", (240, 180), BASE_CONFIG, 400, RESULTS_ROOT / "camvid"),
    # A GPU: CamVid as shipped (480x360), the paper's crop, batch, discriminator and 5000
    # iterations; still from random weights, since no pretrained weights can be fetched there.
    "gpu": Profile(
        "gpu",
        (480, 360),
        BASE_CONFIG.replace(crop_size=321, batch_size=10, discriminator="paper", precision="mixed_float16",
                            jit_compile=True, checkpoint_every=500),  # fmt: skip
        5000,
        RESULTS_ROOT / "camvid_gpu",
    ),
}
CPU = PROFILES["cpu"]
#: The 2-core CPU from ImageNet weights (benchmarks/README.md has the plan behind its size and
#: length): the paper's recipe (the 10x head, frozen backbone batch norm, its D, the semi loss from
#: a quarter of the run), at half size, three seeds. G's learning rate is 10x the paper's 2.5e-4:
#: in 600 iterations the paper's rate reached 34.4% with all labels, 2.5e-3 43.5%, and 1e-2
#: diverged (4.4%; 37.7% at 1/8), all seed 0.
PROFILES["imagenet"] = Profile(
    "imagenet",
    (240, 180),
    BASE_CONFIG.replace(
        backbone="efficientnet_lite0", weights="imagenet", freeze_batchnorm=True, discriminator="paper",
        crop_size=128, learning_rate_g=2.5e-3, head_lr_multiplier=10.0, checkpoint_every=50,
        recalibrate_batchnorm=0,  # a frozen ImageNet backbone keeps its statistics; the head's converge
    ),  # fmt: skip
    600,
    RESULTS_ROOT / "camvid_imagenet",
    settings=IMAGENET_SETTINGS,
    seeds=(0, 1, 2),
    semi_start_fraction=0.25,
)
#: The remedy benchmarks/what_d_sees.py points to (the paper's D judges G's maps by their softness):
#: the ImageNet table's methods with D shown G's arg-max as one-hot; the baselines are the ImageNet
#: table's own (no D, so the same runs), and a run's split is the same for the same seed.
PROFILES["imagenet-argmax"] = dataclasses.replace(
    PROFILES["imagenet"],
    name="imagenet-argmax",
    base_config=PROFILES["imagenet"].base_config.replace(discriminator_input="argmax"),
    results_dir=RESULTS_ROOT / "camvid_imagenet_argmax",
    settings=("semi-1of32", "adversarial-1of32", "semi-1of8", "adversarial-1of8", "semi-1of16", "adversarial-1of16"),
    baselines_from="imagenet",
)
#: The tables kept in benchmarks/results, as (folder, iterations): the CPU table, its check at
#: four times the length (1/8 of the labels), the GPU table and the ImageNet table.
KEPT_TABLES = (
    (CPU.results_dir, CPU.steps),
    (RESULTS_ROOT / "camvid_long", 4 * CPU.steps),
    (PROFILES["gpu"].results_dir, PROFILES["gpu"].steps),
    (PROFILES["imagenet"].results_dir, PROFILES["imagenet"].steps),
    (PROFILES["imagenet-argmax"].results_dir, PROFILES["imagenet-argmax"].steps),
)


def portable(path: str | None) -> str | None:
    """``path`` relative to the project root when it lies inside, else its last two parts:
    result files and tables carry no machine's absolute paths."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    if resolved.is_relative_to(PROJECT_ROOT):
        return resolved.relative_to(PROJECT_ROOT).as_posix()
    return f"<outside the project>/{'/'.join(resolved.parts[-2:])}"


def command(
    settings: list[str], seeds: list[int], steps: int, profile: Profile = CPU, results_dir: Path | None = None
) -> str:
    """The command line that trains (or, once done, skips) these runs, with their results in
    ``results_dir`` (default: the profile's folder)."""
    chosen = "" if profile is CPU else f" --profile {profile.name}"
    if results_dir is not None and Path(results_dir).resolve() != profile.results_dir.resolve():
        chosen += f" --results-dir {portable(str(results_dir))}"
    return f"python {SCRIPT}{chosen} --only {' '.join(settings)} --seeds {' '.join(map(str, seeds))} --steps {steps}"


def experiment_config(
    setting: str, seed: int, steps: int, data_dir: Path, results_dir: Path, run_dir: Path, profile: Profile = CPU
) -> ExperimentConfig:
    """The run's configuration; the labeled/unlabeled split files live beside the results, so
    that the three methods at one fraction and seed train on the same labels."""
    row = SETTINGS[setting]
    return profile.base_config.replace(
        name=f"camvid-{setting}-seed{seed}",
        method=row.method,
        data_dir=str(data_dir),
        labeled_fraction=row.labeled_fraction,
        split_file=str(results_dir / "splits" / f"camvid_labeled{row.labeled_fraction:g}_seed{seed}.txt"),
        steps=steps,
        semi_start=int(steps * profile.semi_start_fraction),
        checkpoint_dir=str(run_dir),
        seed=seed,
    )
