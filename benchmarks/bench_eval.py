"""Whole-image evaluation throughput of the confusion-matrix update.

Compares, on the same predictions in the same run, the vectorised numpy path
(:class:`advseg_utils.metrics.ConfusionMatrix`), the streaming Keras metric
(:class:`advseg_utils.metrics.MeanIoU`, fed label maps and fed logits) and a reference that
updates the matrix pixel by pixel in a Python loop, as the original AdvSemiSeg evaluation did.
Truth maps are CamVid's val labels when present (11 classes, void 11 not counted), random ones
otherwise; predictions are the argmax of random logits. The reference runs on a few images
only, once; the fast paths run over all of them, best of three passes. Rates are per image.

    python benchmarks/bench_eval.py [--quick] [--camvid PATH]
"""
from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from advseg_utils.file_utils import load_mask
from advseg_utils.metrics import ConfusionMatrix, MeanIoU
from machine_info import machine

NUM_CLASSES = 11
HEIGHT, WIDTH = 360, 480
LOGIT_POOL = 4  # distinct logit maps, reused cyclically to keep memory small
REPEATS = 3  # timed passes of the fast paths; the best one counts
DEFAULT_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid" / "labels" / "val"


def reference_update(matrix: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
    """The original per-pixel loop (AdvSemiSeg utils/metric.py, ConfusionMatrix.generateM)."""
    truth, prediction = truth.ravel(), prediction.ravel()
    for i in range(len(truth)):
        if truth[i] < len(matrix):
            matrix[truth[i], prediction[i]] += 1


def load_truth(camvid: Path, count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` CamVid val label maps, or random ones (with 5% void) when absent."""
    paths = sorted(camvid.glob("*.png"))[:count] if camvid.is_dir() else []
    if paths:
        return [load_mask(path) for path in paths], f"CamVid labels, {camvid.parent.name}/{camvid.name}"
    truth = rng.integers(0, NUM_CLASSES + 1, (count, HEIGHT, WIDTH), dtype=np.uint8)
    return list(truth), "random labels"


def _images_per_second(update, pairs, reset=lambda: None, repeats: int = 1) -> float:
    """The best of ``repeats`` timed passes (the machine may be shared), each after ``reset()``."""
    best = 0.0
    for _ in range(repeats):
        reset()
        start = time.perf_counter()
        for pair in pairs:
            update(*pair)
        best = max(best, len(pairs) / (time.perf_counter() - start))
    return best


def run(quick: bool = False, camvid: Path = DEFAULT_CAMVID) -> dict:
    """Measure every path; check they produce the same matrix; return the figures."""
    rng = np.random.default_rng(0)
    truth, source = load_truth(Path(camvid), 20 if quick else 101, rng)
    logits = [tf.constant(rng.normal(size=(1, *t.shape, NUM_CLASSES)).astype(np.float32)) for t in truth[:LOGIT_POOL]]
    logits = [logits[i % LOGIT_POOL] for i in range(len(truth))]
    predictions = [np.asarray(tf.argmax(x[0], axis=-1), dtype=np.int64) for x in logits]
    reference_count = 1 if quick else 3

    numpy_matrix = ConfusionMatrix(NUM_CLASSES)
    numpy_rate = _images_per_second(numpy_matrix.update, list(zip(truth, predictions)), numpy_matrix.reset, REPEATS)

    metric = MeanIoU(NUM_CLASSES)
    update_metric = tf.function(metric.update_state)
    label_batches = [(tf.constant(t[None]), tf.constant(p[None])) for t, p in zip(truth, predictions)]
    update_metric(*label_batches[0])  # trace once, outside the timing
    keras_labels_rate = _images_per_second(update_metric, label_batches, metric.reset_state, REPEATS)
    keras_matrix = metric.confusion_matrix()

    logit_batches = [(truth_batch, x) for (truth_batch, _), x in zip(label_batches, logits)]
    update_metric(*logit_batches[0])
    keras_logits_rate = _images_per_second(update_metric, logit_batches, metric.reset_state, REPEATS)

    reference_matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    reference_pairs = list(zip(truth, predictions))[:reference_count]
    reference_rate = _images_per_second(lambda t, p: reference_update(reference_matrix, t, p), reference_pairs)

    subset = ConfusionMatrix(NUM_CLASSES)
    for t, p in reference_pairs:
        subset.update(t, p)
    assert np.array_equal(subset.matrix, reference_matrix), "numpy and reference matrices differ"
    assert np.array_equal(numpy_matrix.matrix, keras_matrix), "numpy and Keras matrices differ"
    assert np.array_equal(numpy_matrix.matrix, metric.confusion_matrix()), "logits and labels paths differ"

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "tensorflow": tf.__version__,
        "data": source,
        "image_size": f"{truth[0].shape[0]}x{truth[0].shape[1]}",
        "images": len(truth),
        "reference_images": reference_count,
        "images_per_s": {
            "numpy ConfusionMatrix.update (labels)": numpy_rate,
            "Keras MeanIoU.update_state (labels)": keras_labels_rate,
            "Keras MeanIoU.update_state (logits, incl. argmax)": keras_logits_rate,
            "reference per-pixel Python loop": reference_rate,
        },
        "speedup_numpy_vs_reference": numpy_rate / reference_rate,
        "speedup_keras_labels_vs_reference": keras_labels_rate / reference_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 images, the reference on 1")
    parser.add_argument("--camvid", type=Path, default=DEFAULT_CAMVID, help="folder of CamVid label PNGs")
    args = parser.parse_args()
    results = run(quick=args.quick, camvid=args.camvid)
    for key in ("date", "machine", "tensorflow", "data", "image_size", "images", "reference_images"):
        print(f"{key:>18}: {results[key]}")
    for name, rate in results["images_per_s"].items():
        print(f"{rate:12.1f} images/s  {name}")
    print(f"speed-up over the per-pixel loop: numpy {results['speedup_numpy_vs_reference']:.0f}x, "
          f"Keras metric {results['speedup_keras_labels_vs_reference']:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
