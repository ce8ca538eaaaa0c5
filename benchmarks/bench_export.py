"""File size and CPU latency per image of G's exports (advseg_utils.export) beside the Keras model.

One process, one G: DeepLabV3+ on EfficientNet-Lite0 (ImageNet weights, 21 classes, head as
initialised; size and latency do not depend on training), or a trained ``.keras`` file with
``--model``. G is saved as ``.keras`` and exported to every format; each is reloaded with its own
runtime (TensorFlow, the TFLite interpreter with as many threads as CPUs, onnxruntime) and run
on the bundled sample images resized to one size, labels and probabilities both computed. The
reference is the Keras model in a ``tf.function`` (as Segmenter runs it). Latency is the median
over the images of each image's best of ``REPEATS`` runs, after one warm-up run; each format's
label agreement with the Keras model is reported too.

    python benchmarks/bench_export.py [--quick] [--model G.keras] [--size 384x512]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from advseg_utils import build_generator, export_generator, load_img, sample_dataset, save_generator, segment
from advseg_utils.export import FORMATS
from machine_info import machine

REPEATS = 3
EXTENSIONS = {"saved_model": "", "tflite": ".tflite", "tflite_int8": ".tflite", "onnx": ".onnx"}


def runners(generator: keras.Model, files: dict[str, Path]) -> dict:
    """{format: image uint8 [H, W, 3] -> labels uint8 [H, W]}, Keras first."""
    keras_fn = tf.function(lambda images: segment(generator, images))
    result = {"keras": lambda image: keras_fn(tf.constant(image[None]))[0].numpy()[0]}
    if "saved_model" in files:
        serve = tf.saved_model.load(str(files["saved_model"])).signatures["serving_default"]
        result["saved_model"] = lambda image: serve(images=tf.constant(image))["labels"].numpy()
    for name in ("tflite", "tflite_int8"):
        if name in files:
            interpreter = tf.lite.Interpreter(model_path=str(files[name]), num_threads=os.cpu_count())
            result[name] = (lambda run: lambda image: run(images=image[None])["labels"][0])(interpreter.get_signature_runner())
    if "onnx" in files:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
        result["onnx"] = lambda image: session.run(["labels", "probabilities"], {"images": image[None]})[0][0]
    return result


def latency_ms(run, images: list[np.ndarray]) -> float:
    """Median over ``images`` of each one's best of REPEATS runs (the machine may be shared)."""
    run(images[0])  # warm-up: tracing, allocation
    best = []
    for image in images:
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            run(image)
            times.append(time.perf_counter() - start)
        best.append(min(times))
    return 1000 * statistics.median(best)


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False, model: Path | None = None, size: tuple[int, int] = (384, 512)) -> dict:
    """Export, reload, time; return the figures."""
    size = (192, 256) if quick and size == (384, 512) else size
    generator = keras.saving.load_model(model) if model else build_generator(21, "efficientnet_lite0", weights="imagenet")
    dataset = sample_dataset("val")
    images = [tf.cast(tf.round(tf.image.resize(load_img(p), size)), tf.uint8).numpy() for p in dataset.image_paths]
    images = images[:3] if quick else images
    formats = [f for f in FORMATS if f != "onnx" or onnx_available()]
    with tempfile.TemporaryDirectory() as folder:
        files = {"keras": Path(folder) / "g.keras"}
        save_generator(generator, str(files["keras"]))
        export_seconds = {}
        for name in formats:
            start = time.perf_counter()
            calibration = sample_dataset("train") if name == "tflite_int8" else None
            files[name] = export_generator(generator, Path(folder) / f"g_{name}{EXTENSIONS[name]}", name, calibration_images=calibration)
            export_seconds[name] = time.perf_counter() - start
        sizes = {name: _size_mb(path) for name, path in files.items()}
        run_image = runners(generator, files)
        latency = {name: latency_ms(run_image[name], images) for name in files}
        reference = [run_image["keras"](image) for image in images]
        agreement = {name: float(np.mean([(run_image[name](i) == r).mean() for i, r in zip(images, reference)])) for name in formats}
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "model": str(model) if model else "efficientnet_lite0 DeepLabV3+, ImageNet weights, 21 classes, untrained head",
        "image_size": f"{size[0]}x{size[1]}",
        "images": len(images),
        "onnx": "tf2onnx + onnxruntime" if "onnx" in formats else "skipped: tf2onnx or onnxruntime missing",
        "size_mb": sizes,
        "size_vs_keras": {name: sizes[name] / sizes["keras"] for name in formats},
        "latency_ms_per_image": latency,
        "speedup_vs_keras": {name: latency["keras"] / latency[name] for name in formats},
        "label_agreement_with_keras": agreement,
        "export_seconds": export_seconds,
    }


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 images at 192x256")
    parser.add_argument("--model", type=Path, help="a trained generator (.keras) instead of the ImageNet-initialised one")
    parser.add_argument("--size", default="384x512", help="HxW the images are resized to (default 384x512)")
    args = parser.parse_args()
    results = run(args.quick, args.model, tuple(int(side) for side in args.size.split("x")))
    for key in ("date", "machine", "model", "image_size", "images", "onnx"):
        print(f"{key:>12}: {results[key]}")
    print(f"{'format':>12}  {'MB':>7}  {'x Keras':>7}  {'ms/image':>8}  {'speed-up':>8}  {'labels = Keras':>14}")
    for name, megabytes in results["size_mb"].items():
        ratio = results["size_vs_keras"].get(name, 1.0)
        speedup = results["speedup_vs_keras"].get(name, 1.0)
        agreement = results["label_agreement_with_keras"].get(name, 1.0)
        print(f"{name:>12}  {megabytes:7.2f}  {ratio:7.2f}  {results['latency_ms_per_image'][name]:8.1f}  {speedup:8.2f}  {agreement:14.4f}")


if __name__ == "__main__":
    main()
