"""Training throughput of the baseline, adversarial and semi-supervised steps.

Each step is the method's (:mod:`advseg_utils.method`) compiled ``train_step`` (the function
``fit`` runs) on real networks without pretrained weights (three generators: this project's
default DeepLabV3+ on MobileNetV2, the same head on EfficientNet-Lite0, whose ImageNet weights
install offline, and the paper's DeepLab-v2 on ResNet-101) and the paper's discriminator, fed
one synthetic batch held in memory, so that the input pipeline is not measured. The figures
are labeled images per second and the cost of a step relative to the baseline step, measured in
the same run: the semi-supervised step runs G on twice the images, D on three
maps (G's two predictions and the ground truth) and backpropagates through D five times
(G's two adversarial terms, D's loss on three maps); the goal is at most 2.5x the baseline
step. The paper's D costs about as much per image as a small generator at the same size, so
the ratio depends on G.

    python benchmarks/bench_train.py [--quick] [--gpu [--precision float32 mixed_float16] [--xla off on]]

``--gpu`` measures the paper's setting (crop 321, batch 10) with and without mixed precision
and XLA on a GPU, printing each setting as it finishes (XLA compiles the paper's ResNet-101 for
minutes; ``--precision`` and ``--xla`` pick a subset).
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Iterator

import keras
import tensorflow as tf

from advseg_utils.models import build_discriminator, build_generator
from advseg_utils.runtime import configure_precision
from advseg_utils.schedules import paper_optimizers
from advseg_utils.method import METHOD_CLASSES
from machine_info import machine
from synthetic_batches import NUM_CLASSES, synthetic_arrays

MODES = ("baseline", "adversarial", "semi")
#: Generators as (backbone, head, output stride).
MOBILENET = ("mobilenet_v2", "deeplabv3plus", 16)  # this project's default generator
LITE0 = ("efficientnet_lite0", "deeplabv3plus", 16)  # the backbone with offline ImageNet weights
PAPER_G = ("resnet101", "deeplabv2", 16)  # the paper's generator, at output stride 16 on the CPU
PAPER_G_OS8 = ("resnet101", "deeplabv2", 8)  # and at its own output stride on a GPU
POLICIES = ("float32", "mixed_float16")


def synthetic_batch(mode: str, batch_size: int, crop: int, seed: int = 0) -> dict:
    """:func:`synthetic_arrays` (random images, labels 5% ignored) as tensors."""
    return {key: tf.constant(value) for key, value in synthetic_arrays(mode, batch_size, crop, seed).items()}


def compiled_step(generator: tuple, mode: str, batch_size: int, crop: int, jit_compile: bool) -> tuple:
    """(the training model of ``mode``, its compiled training step as fit runs it, the iterator
    of its synthetic batch) for a ``(backbone, head, output_stride)`` generator."""
    keras.utils.set_random_seed(0)
    backbone, head, output_stride = generator
    g = build_generator(NUM_CLASSES, backbone=backbone, head=head, weights=None, output_stride=output_stride)
    d = None if mode == "baseline" else build_discriminator(NUM_CLASSES)
    options = {"semi_start": 0} if mode == "semi" else {}
    model = METHOD_CLASSES[mode](g, d, num_classes=NUM_CLASSES, **options)
    g_optimizer, d_optimizer = paper_optimizers(total_steps=20000)
    model.compile(g_optimizer, d_optimizer if d is not None else None, jit_compile=jit_compile)
    iterator = iter(tf.data.Dataset.from_tensors(synthetic_batch(mode, batch_size, crop)).repeat())
    model.make_train_function()
    return model, model.train_function, iterator


def compiled_steps(generator: tuple, batch_size: int, crop: int, jit_compile: bool) -> dict:
    """{mode: (one compiled training step, as fit runs it; its batch iterator)} for a
    ``(backbone, head, output_stride)`` generator."""
    return {mode: compiled_step(generator, mode, batch_size, crop, jit_compile)[1:] for mode in MODES}


def measure(generator: tuple, batch_size: int, crop: int, rounds: int, jit_compile=False) -> dict:
    """Labeled images per second of each mode and its step cost relative to the baseline step.

    A step's time is the best of ``rounds`` (after three untimed steps); the modes take turns
    in every round, so that a load on a shared machine hits them alike.
    """
    steps = compiled_steps(generator, batch_size, crop, jit_compile)
    for train_function, iterator in steps.values():
        for _ in range(3):
            float(train_function(iterator)["loss"])
    best = dict.fromkeys(MODES, float("inf"))
    for _ in range(rounds):
        for mode, (train_function, iterator) in steps.items():
            start = time.perf_counter()
            float(train_function(iterator)["loss"])  # waits for the step to finish
            best[mode] = min(best[mode], time.perf_counter() - start)
    return {
        "images_per_s": {mode: batch_size / best[mode] for mode in MODES},
        "cost_vs_baseline": {mode: best[mode] / best["baseline"] for mode in MODES[1:]},
    }


def run(quick: bool = False, gpu: bool = False) -> dict:
    """{setting: figures}. On the CPU: MobileNetV2/DeepLabV3+ (this project's default G),
    EfficientNet-Lite0/DeepLabV3+ and ResNet-101/DeepLab-v2 (the paper's G) at crop 129, batch 4
    (quick: MobileNetV2 only at crop 65, batch 2). With ``gpu``: :func:`gpu_settings`."""
    if gpu:
        return dict(gpu_settings(quick))
    generators = [MOBILENET] if quick else [MOBILENET, LITE0, PAPER_G]
    crop, batch_size, rounds = (65, 2, 3) if quick else (129, 4, 5)
    return {
        f"{g[0]} + {g[1]}, crop {crop}, batch {batch_size}, float32": measure(g, batch_size, crop, rounds)
        for g in generators
    }


def gpu_settings(quick: bool = False, policies=POLICIES, xla=(False, True)) -> Iterator[tuple[str, dict]]:
    """(setting, figures) for both generators at the paper's crop 321, batch 10, in each
    precision ``policies`` and with XLA off and/or on, yielded as each finishes (a GPU run can
    be long; its figures are printed as they come). The paper's G runs at its output stride 8.
    Figures include the GPU's peak memory of the setting."""
    if not tf.config.list_physical_devices("GPU"):
        raise SystemExit("--gpu: no GPU visible to TensorFlow")
    crop, batch_size, rounds = 321, 10, (3 if quick else 10)
    for policy in policies:
        configure_precision(policy)
        for jit_compile in xla:
            for g in (MOBILENET, PAPER_G_OS8):
                name = f"{g[0]} + {g[1]} (OS {g[2]}), crop {crop}, batch {batch_size}, {policy}, XLA {'on' if jit_compile else 'off'}"
                tf.config.experimental.reset_memory_stats("GPU:0")
                figures = measure(g, batch_size, crop, rounds, jit_compile)
                figures["gpu_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
                keras.backend.clear_session()  # the finished setting's networks and graphs
                yield name, figures
    configure_precision("float32")


def report(results: dict) -> None:
    for setting, figures in results.items():
        print(f"\n{setting}\n  {'mode':<12}{'images/s':>10}{'step cost vs baseline':>24}")
        for mode in MODES:
            cost = figures["cost_vs_baseline"].get(mode, 1.0)
            print(f"  {mode:<12}{figures['images_per_s'][mode]:>10.2f}{cost:>23.2f}x")
        if "gpu_peak_mib" in figures:
            print(f"  GPU peak memory of the three steps: {figures['gpu_peak_mib']:.0f} MiB")
        semi = figures["cost_vs_baseline"]["semi"]
        print(f"  goal, a semi step at most 2.5x the baseline step: {'met' if semi <= 2.5 else 'not met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller crops and fewer steps")
    parser.add_argument("--gpu", action="store_true", help="the paper's setting on a GPU, +/- mixed precision, XLA")
    parser.add_argument("--precision", nargs="+", choices=POLICIES, default=POLICIES, help="with --gpu")
    parser.add_argument("--xla", nargs="+", choices=("off", "on"), default=("off", "on"), help="with --gpu")
    args = parser.parse_args()
    print(f"bench_train.py, {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}", flush=True)
    if not args.gpu:
        report(run(args.quick))
        return
    for name, figures in gpu_settings(args.quick, args.precision, [x == "on" for x in args.xla]):
        report({name: figures})
        print(json.dumps({name: figures}), flush=True)


if __name__ == "__main__":
    main()
