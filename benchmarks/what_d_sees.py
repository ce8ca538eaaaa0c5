"""What does D tell apart? The share of pixels a trained D judges real, on different kinds of maps.

The paper's D is meant to judge whether a label map's content looks like ground truth. It can
instead judge how a map's values look: ground truth is one-hot at every pixel, G's softmax never
is. This script asks a checkpoint of a ``quality_camvid.py`` run (the folder under
``~/.cache/advseg/quality_camvid/runs-<profile>/`` while it trains) which it does. If D calls
G's arg-max, one-hot, as real as often as the ground truth, and G's softmax fake, it judges
softness and not content; then its confidence map marks where G is already confident.

    python benchmarks/what_d_sees.py --profile imagenet --setting semi-1of32 --seed 1 RUN_FOLDER

The run may be training: its newest checkpoint is copied first. A pixel counts as judged real
when D's logit there is above 0 (probability above 0.5); void and padding pixels ("holes", the
ignore label, all-zero in a one-hot map) are left out of every share.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import tensorflow as tf

import camvid_data
import camvid_profiles
from advseg_utils import build_model, load_datasets, split_ids, training_stream
from advseg_utils.method.adversarial import one_hot_with_ignore
from advseg_utils.runner import restore_latest

#: Pixels within this many pixels of a hole count as "near" one (D's first layers see them).
NEAR_HOLE_PX = 16


def verdicts(
    generator: Callable, discriminator: Callable, batches: Iterable[dict], num_classes: int, ignore_label: int = 255
) -> dict[str, tuple[float, int]]:
    """(share judged real, pixels) per kind of map, over ``batches`` of a semi-supervised
    training stream (``image``, ``label``, ``d_label``, ``unlabeled_image``). G runs in training
    mode, as it does when D sees its maps."""
    counts: dict[str, list[int]] = {}

    def judge(name: str, maps: tf.Tensor, mask: tf.Tensor) -> None:
        real = tf.boolean_mask(discriminator(maps, training=False)[..., 0] > 0, mask)
        count = counts.setdefault(name, [0, 0])
        count[0] += int(tf.reduce_sum(tf.cast(real, tf.int32)))
        count[1] += int(tf.size(real))

    for batch in batches:
        holes = batch["d_label"] == ignore_label
        truth = one_hot_with_ignore(batch["d_label"], num_classes, ignore_label)
        near = tf.nn.max_pool2d(tf.cast(holes, tf.float32)[..., None], 2 * NEAR_HOLE_PX + 1, 1, "SAME")[..., 0] > 0
        judge("ground truth (one-hot)", truth, ~holes)
        judge(f"ground truth, more than {NEAR_HOLE_PX} px from a hole", truth, ~near)
        judge(f"ground truth, within {NEAR_HOLE_PX} px of a hole", truth, near & ~holes)
        labeled = batch["label"] != ignore_label
        for images, mask, where in (
            (batch["image"], labeled, "labeled"),
            (batch["unlabeled_image"], tf.ones_like(labeled), "unlabeled"),
        ):
            probabilities = tf.nn.softmax(tf.cast(generator(images, training=True), tf.float32))
            judge(f"G's softmax, {where} images", probabilities, mask)
            judge(f"G's arg-max as one-hot, {where} images", tf.one_hot(tf.argmax(probabilities, -1), num_classes), mask)
            if where == "unlabeled":
                sharpened = tf.nn.softmax(tf.math.log(probabilities + 1e-8) / 0.25)
                judge("G's softmax sharpened (temperature 0.25), unlabeled images", sharpened, mask)
    return {name: (real / max(total, 1), total) for name, (real, total) in counts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_folder", type=Path, help="a quality_camvid.py run's checkpoint folder")
    parser.add_argument("--profile", choices=list(camvid_profiles.PROFILES), default="imagenet")
    parser.add_argument("--setting", default="semi-1of32", help="the run's setting (a semi-supervised one)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--batches", type=int, default=6, help="training batches to judge")
    parser.add_argument("--work-dir", type=Path, default=camvid_data.DEFAULT_WORK)
    parser.add_argument("--camvid", type=Path, default=camvid_data.DEFAULT_CAMVID)
    args = parser.parse_args(argv)
    profile = camvid_profiles.PROFILES[args.profile]
    if camvid_profiles.SETTINGS[args.setting].method != "semi":
        parser.error(f"--setting {args.setting}: expected a semi-supervised setting (its stream has unlabeled images)")
    data_dir = camvid_data.downscaled_camvid(
        args.camvid, args.work_dir / camvid_data.copy_name(args.camvid, profile.image_size), profile.image_size
    )
    with tempfile.TemporaryDirectory(prefix="advseg-what-d-sees-") as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(args.run_folder, copy)
        config = camvid_profiles.experiment_config(
            args.setting, args.seed, profile.steps, data_dir, profile.results_dir, copy, profile
        )
        train_set, _ = load_datasets(config)
        model = build_model(config, train_set)
        iteration = restore_latest(model, str(copy))
        if iteration == 0:
            raise SystemExit(f"{args.run_folder}: no checkpoint to judge with (expected ckpt-* files)")
        stream = iter(training_stream(config, train_set, *split_ids(config, train_set))(iteration))
        batches = [next(stream) for _ in range(args.batches)]
        shares = verdicts(model.generator, model.discriminator, batches, train_set.num_classes, train_set.ignore_label)
    print(f"{args.setting} seed {args.seed}, iteration {iteration}, {args.batches} batches of {config.batch_size}")
    print("| D's input | judged real | pixels |\n|---|---:|---:|")
    for name, (share, pixels) in shares.items():
        print(f"| {name} | {100 * share:.1f} % | {pixels} |")


if __name__ == "__main__":
    main()
