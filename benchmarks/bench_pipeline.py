"""Training-pipeline throughput: VOCGen.train against a PIL-in-Python PyDataset loader.

Both read the same CamVid training images and produce batches of the same size in the same run.
The reference is the kind of loader earlier ports used: a keras.utils.PyDataset that decodes each
image and mask with PIL in Python and resizes them to the output size (no random scaling). Goal:
VOCGen at least 2x the reference's images/s on a 2-core machine.

The two loaders are timed in alternating rounds so that both see the same background load, and
the CPU time each spends per image is reported too: unlike images/s, it barely depends on what
else the machine is doing.

    python benchmarks/bench_pipeline.py [--quick] [--camvid PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from advseg_utils.datasets import SegDataset, camvid_dataset
from advseg_utils.file_utils import load_mask
from advseg_utils.voc_gen import VOCGen
from machine_info import machine

DEFAULT_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
CROP_SIZE = (321, 321)
BATCH_SIZE = 10
WARMUP_BATCHES = 3


class PILReferenceLoader(keras.utils.PyDataset):
    """Batches decoded with PIL in Python and resized to ``size`` (image bilinear, mask nearest)."""

    def __init__(self, dataset: SegDataset, batch_size: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.size = dataset, batch_size, size

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        items = range(index * self.batch_size, (index + 1) * self.batch_size)
        width_height = self.size[::-1]
        images, labels = [], []
        for i in items:
            image = (
                Image.open(self.dataset.image_paths[i]).convert("RGB").resize(width_height, Image.BILINEAR)
            )
            mask = Image.fromarray(load_mask(self.dataset.mask_paths[i], self.dataset.label_remap))
            images.append(np.asarray(image, np.float32))
            labels.append(np.asarray(mask.resize(width_height, Image.NEAREST), np.int32))
        return np.stack(images), np.stack(labels)


def time_batches(batches: Iterator, num_batches: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to draw ``num_batches`` batches after a warm-up."""
    for _ in range(WARMUP_BATCHES):
        next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(batches)
    return time.perf_counter() - wall, time.process_time() - cpu


def run(quick: bool = False, camvid: Path = DEFAULT_CAMVID) -> dict:
    """Measure both loaders on the CamVid training images and return the figures."""
    dataset = camvid_dataset(camvid, "train")
    rounds, batches_per_round = (1, 5) if quick else (3, 15)
    generator = VOCGen(dataset, crop_size=CROP_SIZE, batch_size=BATCH_SIZE)
    reference = PILReferenceLoader(dataset, BATCH_SIZE, CROP_SIZE)
    loaders = {
        "voc_gen": lambda: iter(generator.train()),
        "reference": lambda: (reference[i % len(reference)] for i in range(10**9)),
    }
    load_average = os.getloadavg()[0]
    totals = {name: np.zeros(2) for name in loaders}
    for _ in range(rounds):
        for name, make_batches in loaders.items():
            totals[name] += time_batches(make_batches(), batches_per_round)
    num_images = rounds * batches_per_round * BATCH_SIZE
    results = {
        "benchmark": "training pipeline throughput, CamVid train (480x360 JPEG + PNG mask)",
        "crop_size": CROP_SIZE,
        "batch_size": BATCH_SIZE,
        "images_timed": num_images,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_start": load_average,
    }
    for name, (wall, cpu) in totals.items():
        results[f"{name}_images_per_s"] = num_images / wall
        results[f"{name}_cpu_ms_per_image"] = 1000 * cpu / num_images
    results["speedup"] = results["voc_gen_images_per_s"] / results["reference_images_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="one round of 5 batches instead of 3 rounds of 15"
    )
    parser.add_argument(
        "--camvid", type=Path, default=DEFAULT_CAMVID, help="CamVid root (images/, labels/, train.txt)"
    )
    args = parser.parse_args()
    results = run(args.quick, args.camvid)
    print(results["benchmark"])
    print(
        f"  crop {results['crop_size'][0]}x{results['crop_size'][1]}, batch {results['batch_size']}, "
        f"{results['images_timed']} images timed per loader"
    )
    print(f"  {'':30s} {'images/s':>9s} {'CPU ms/image':>13s}")
    for name, label in (("voc_gen", "VOCGen.train (tf.data)"), ("reference", "reference (PIL in PyDataset)")):
        print(
            f"  {label:30s} {results[name + '_images_per_s']:9.1f} {results[name + '_cpu_ms_per_image']:13.2f}"
        )
    print(f"  speedup: {results['speedup']:.2f}x (goal: >= 2x)")
    print(
        f"  {results['date']}, {results['machine']}, load average {results['load_average_at_start']:.2f} at start"
    )


if __name__ == "__main__":
    main()
