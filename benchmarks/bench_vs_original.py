"""This project's training step against the original PyTorch implementation's, side by side.

For each mode (baseline, + adversarial, + adversarial + semi), one process runs
:mod:`advseg_utils.method`'s compiled step with the paper's G
(``build_generator(backbone="resnet101", head="deeplabv2", output_stride=8, weights=None)``)
and D, and another runs ``original_torch.py``'s re-statement of the original ``train.py``
iteration with the same network shapes, crop, batch and precision, on the same synthetic batch.
The two processes take turns step by step (ABBA order), so that a load on a shared machine hits
both alike; each step is timed inside its own process. Reported per mode and side: labeled
images/s (median and range over the rounds), the per-round ratio of this project's throughput to
the original's, the floating-point operations of one step (:mod:`flops` on this project's traced
step; ``torch.utils.flop_counter`` on the original's), the achieved FLOP/s, the time of the first
step (tracing, compiling), and each process's peak resident memory (and GPU peak allocation).

The networks differ in what the frameworks do differently, not in shape: Keras's ResNet-101
convolutions carry biases, its batch norm trains its scale and shift (the original freezes
them: both use batch statistics), and the original's classifier sums only two of its four
branches (see ``original_torch.py``); ``--original-branches 4`` (the default) equalises that.

    python benchmarks/bench_vs_original.py [--crop 161] [--batch 2] [--rounds 6] [--modes ...]
        [--precision float32|mixed] [--xla] [--original-branches 2|4] [--gpu]

``--gpu``: the paper's crop 321 and batch 10, each side at its best (PyTorch with autocast, this
project with mixed precision and XLA), with the share of the GPU's peak FLOP/s. PyTorch is a
benchmark-only dependency (``benchmarks/requirements.txt``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from synthetic_batches import synthetic_arrays

MODES = ("baseline", "adversarial", "semi")
SIDES = ("advseg", "original")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_MARK = "@@bench "  # prefixes a worker's messages on its stdout (anything else is a library's chatter)

#: Dense peak TFLOP/s of a GPU, by a part of its name: (16-bit tensor cores, TF32 tensor cores),
#: the vendor's datasheet figures (SXM parts where there are several).
GPU_PEAK_TFLOPS = {
    "H200": (989.4, 494.7), "H100": (989.4, 494.7), "A100": (312.0, 156.0),
    "L4": (121.0, 60.0), "T4": (65.0, 8.1), "V100": (125.0, 15.7),
}  # fmt: skip


def gpu_peak_tflops(device_name: str, precision: str) -> float | None:
    """The peak of the GPU named ``device_name`` for ``precision`` ("mixed": 16-bit tensor
    cores; "float32": TF32, which both frameworks use for float32 convolutions), None if unknown."""
    for part, (half, tf32) in GPU_PEAK_TFLOPS.items():
        if part in device_name:
            return half if precision == "mixed" else tf32
    return None


def summarise(seconds: dict[str, list[float]], batch_size: int) -> dict:
    """Images/s of each side (median, min, max over rounds) and the per-round ratio of this
    project's throughput to the original's (>1: this project is faster)."""
    ratios = [o / a for a, o in zip(seconds["advseg"], seconds["original"])]
    figures = {
        side: {
            "images_per_s": batch_size / statistics.median(times),
            "images_per_s_range": [batch_size / max(times), batch_size / min(times)],
            "step_s": times,
        }
        for side, times in seconds.items()
    }
    figures["speed_ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return figures


def memory_mib(pid: int, field: str = "VmHWM") -> float:
    """A memory figure of the live process ``pid`` from /proc: "VmHWM" its peak resident set
    (of its own address space, unlike ``ru_maxrss``), "VmRSS" its resident set now."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


class Worker:
    """One side of one mode in its own process: builds, warms up, then runs a step per call."""

    def __init__(self, side: str, mode: str, options: argparse.Namespace):
        command = [sys.executable, __file__, "--worker", side, "--modes", mode, "--crop", str(options.crop),
                   "--batch", str(options.batch), "--precision", options.precision,
                   "--original-branches", str(options.original_branches), *(["--xla"] if options.xla else [])]  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.side = side
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.receive()  # sent once the framework is imported
        self.rss_after_import_mib = memory_mib(self.process.pid, "VmRSS")
        self.setup: dict = {}

    def wait_ready(self) -> None:
        """Waits for the build, the first step and the warm-up; keeps their figures."""
        self.setup = self.receive()

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK) :])
        raise RuntimeError(f"the {self.side} worker exited (code {self.process.wait()}) before answering")

    def step(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self.receive()["seconds"]

    def close(self) -> dict:
        """The worker's setup figures, its peak RSS, and its GPU peak (if any); ends it."""
        figures = {**self.setup, "rss_after_import_mib": self.rss_after_import_mib, "peak_rss_mib": memory_mib(self.process.pid)}
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        figures.update(self.receive())
        self.process.wait()
        return figures


def compare(mode: str, options: argparse.Namespace) -> dict:
    """Both sides of ``mode``, in turns: figures per side and the speed ratio."""
    workers = [Worker(side, mode, options) for side in SIDES]  # both build at once (untimed)
    for worker in workers:
        worker.wait_ready()
    seconds = {side: [] for side in SIDES}
    for round_index in range(options.rounds):
        for worker in workers if round_index % 2 == 0 else workers[::-1]:
            seconds[worker.side].append(worker.step())
    figures = summarise(seconds, options.batch)
    for worker in workers:
        side = figures[worker.side]
        side.update(worker.close())
        side["achieved_gflop_per_s"] = side["flops_per_step"] / 1e9 * side["images_per_s"] / options.batch
        peak = gpu_peak_tflops(side.get("device", ""), options.precision)
        if peak:
            side["share_of_gpu_peak"] = side["achieved_gflop_per_s"] / (peak * 1e3)
    return figures


# --- the workers ------------------------------------------------------------------------------


def _send(message: dict) -> None:
    print(_MARK + json.dumps(message), flush=True)


def _serve(step) -> None:
    """Answers "step" with the seconds one step took, until "quit"."""
    for command in sys.stdin:
        if command.strip() == "quit":
            return
        start = time.perf_counter()
        step()
        _send({"seconds": time.perf_counter() - start})


def advseg_worker(mode: str, options: argparse.Namespace) -> None:
    import tensorflow as tf

    import bench_train
    from advseg_utils.runtime import configure_precision
    from flops import function_flops

    _send({})
    configure_precision("mixed_float16" if options.precision == "mixed" else "float32")
    start = time.perf_counter()
    model, train_function, iterator = bench_train.compiled_step(
        bench_train.PAPER_G_OS8, mode, options.batch, options.crop, options.xla
    )

    def step():
        float(train_function(iterator)["loss"])  # waits for the step to finish

    step()
    first_step_s = time.perf_counter() - start
    counts = function_flops(model.train_step, next(iterator))
    for _ in range(options.warmup):
        step()
    gpus = tf.config.list_physical_devices("GPU")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    _send({"first_step_s": first_step_s, "flops_per_step": sum(counts.values()), "flops_by_op": dict(counts), "device": device})
    _serve(step)
    _send({"gpu_peak_mib": tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20} if gpus else {})


def original_worker(mode: str, options: argparse.Namespace) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from original_torch import OriginalTraining

    _send({})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # as train.py sets it
    start = time.perf_counter()
    training = OriginalTraining(mode, options.crop, summed_branches=options.original_branches,
                                precision=options.precision, device=device)  # fmt: skip
    batch = {}
    for key, value in synthetic_arrays(mode, options.batch, options.crop).items():
        tensor = torch.from_numpy(value.transpose(0, 3, 1, 2).copy() if value.ndim == 4 else value.astype("int64"))
        batch[key] = tensor.to(device)

    def step():
        training.step(batch)  # returns the loss as a float: waits for the step to finish

    step()
    first_step_s = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(options.warmup):
        step()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    _send({"first_step_s": first_step_s, "flops_per_step": counter.get_total_flops(), "device": name,
           "flops_by_op": {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}})  # fmt: skip
    _serve(step)
    _send({"gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20} if device == "cuda" else {})


# --- the report -------------------------------------------------------------------------------


def report(results: dict) -> None:
    for mode, figures in results["modes"].items():
        ratio = figures["speed_ratio"]
        print(f"\n{mode}: this project / original throughput {ratio['median']:.2f}x "
              f"(rounds: {ratio['min']:.2f}x - {ratio['max']:.2f}x)")  # fmt: skip
        print(f"  {'side':<10}{'images/s':>10}{'range':>16}{'GFLOP/step':>12}{'GFLOP/s':>9}{'first step':>12}{'peak RSS':>10}")
        for side in SIDES:
            s = figures[side]
            low, high = s["images_per_s_range"]
            print(f"  {side:<10}{s['images_per_s']:>10.3f}{f'{low:.3f}-{high:.3f}':>16}{s['flops_per_step'] / 1e9:>12.1f}"
                  f"{s['achieved_gflop_per_s']:>9.1f}{s['first_step_s']:>11.1f}s{s['peak_rss_mib']:>7.0f} MiB"
                  + (f", GPU {s['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in s else "")
                  + (f", {100 * s['share_of_gpu_peak']:.1f}% of peak" if "share_of_gpu_peak" in s else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=161)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per side, taken in turns")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--precision", choices=("float32", "mixed"), help="both sides (default: float32; mixed with --gpu)")
    parser.add_argument("--xla", action="store_true", help="this project's step compiled with XLA")
    parser.add_argument("--original-branches", type=int, choices=(2, 4), default=4,
                        help="classifier branches the original sums: 2 as its code runs, 4 as this project")  # fmt: skip
    parser.add_argument("--gpu", action="store_true", help="crop 321, batch 10, XLA, 10 rounds, mixed precision by default")
    parser.add_argument("--output", type=Path, help="JSON file for the figures (default: results/)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.gpu:
        options.crop, options.batch, options.rounds, options.xla = 321, 10, 10, True
    options.precision = options.precision or ("mixed" if options.gpu else "float32")
    if options.worker:
        {"advseg": advseg_worker, "original": original_worker}[options.worker](options.modes[0], options)
        return
    from machine_info import machine

    started = datetime.datetime.now()
    setting = (f"crop {options.crop}, batch {options.batch}, {options.precision}, XLA {'on' if options.xla else 'off'}, "
               f"original's classifier summing {options.original_branches} branches, {options.rounds} rounds")  # fmt: skip
    print(f"bench_vs_original.py, {started:%Y-%m-%d %H:%M}, {machine()}\n{setting}", flush=True)
    results = {"date": started.isoformat(timespec="seconds"), "machine": machine(), "setting": setting, "modes": {}}
    output = options.output or RESULTS_DIR / f"bench_vs_original{'_gpu' if options.gpu else ''}.json"
    for mode in options.modes:  # the file is rewritten after each mode: a run cut short keeps what it measured
        results["modes"][mode] = compare(mode, options)
        report({"modes": {mode: results["modes"][mode]}})
        output.write_text(json.dumps(results, indent=1))
    print(f"\nfigures in {output}")


if __name__ == "__main__":
    main()
