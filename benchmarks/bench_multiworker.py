"""Training throughput of one worker and of two workers on this machine, at the same global batch.

Both settings run in this one invocation: one process on the default strategy, then a loopback
cluster of two worker processes (127.0.0.1, free ports) on MultiWorkerMirroredStrategy, each
training the configured method through ``train_model``'s stream with ``model.fit``. Reported:
images/s of each (global batch x timed iterations / seconds, after warm-up iterations) and their
ratio. On one CPU machine two workers share its cores, so the ratio says what the gradient
all-reduce and the second process cost rather than what a second machine gains; run it with
``--device gpu`` on a machine with two GPUs (one worker per GPU) for that.

    python benchmarks/bench_multiworker.py [--method semi] [--crop 96] [--batch 4] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER_FLAG = "--as-worker"


def measure(args: argparse.Namespace) -> dict:
    """Trains ``args.warmup`` then ``args.steps`` iterations here; returns images/s of the latter."""
    from advseg_utils.cluster import worker_count, worker_index
    from advseg_utils.config import ExperimentConfig, configure
    from advseg_utils.experiment import build_model, load_datasets, split_ids, training_stream
    from advseg_utils.runtime import get_strategy

    strategy = get_strategy()
    config = ExperimentConfig(
        method=args.method, dataset="sample", labeled_fraction=0.5 if args.method == "semi" else 1,
        split_file=os.path.join(args.scratch, "split.txt"), crop_size=args.crop, batch_size=args.batch,
        backbone="efficientnet_lite0", weights=None, freeze_batchnorm=False, steps=10**6, semi_start=0, precision="float32",
    )  # fmt: skip
    config = configure(config, strategy)
    train_set, _ = load_datasets(config)
    labeled, unlabeled = split_ids(config, train_set)
    model = build_model(config, train_set, strategy)
    stream = training_stream(config, train_set, labeled, unlabeled)(0)
    model.fit(stream, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(stream, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return {
        "workers": worker_count(strategy),
        "worker": worker_index(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "images_per_s": config.batch_size * args.steps / seconds,
    }


def run_processes(configs: list[str | None], argv: list[str], timeout_s: float, device: str) -> list[dict]:
    """Runs this script as a worker once per ``TF_CONFIG`` (None: no cluster) and returns their
    results; all of them within ``timeout_s``."""
    from advseg_utils.cluster import wait_for_workers

    processes = []
    for index, config in enumerate(configs):
        env = {key: value for key, value in os.environ.items() if key not in ("TF_CONFIG", "ADVSEG_SMOKE")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        env["CUDA_VISIBLE_DEVICES"] = str(index) if device == "gpu" else ""
        if config is not None:
            env["TF_CONFIG"] = config
        processes.append(
            subprocess.Popen([sys.executable, __file__, WORKER_FLAG, *argv], env=env, stdout=subprocess.PIPE, text=True)
        )
    results = []
    for status, stdout, _ in wait_for_workers(processes, timeout_s):
        if status:
            raise RuntimeError(f"a worker exited with status {status} (negative: killed by that signal, as at the {timeout_s:.0f} s timeout)")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="semi", choices=("baseline", "adversarial", "semi"))
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4, help="the global batch (split over the workers)")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_worker:
        print(json.dumps(measure(args)))
        return

    import tempfile

    from machine_info import machine

    from advseg_utils.cluster import loopback_tf_configs

    with tempfile.TemporaryDirectory() as scratch:
        argv = [*sys.argv[1:], "--scratch", scratch]
        one = run_processes([None], argv, args.timeout, args.device)[0]
        two = run_processes(loopback_tf_configs(2), argv, args.timeout, args.device)
    print(machine())
    print(f"{args.method}, EfficientNet-Lite0 + DeepLabV3+ (random weights), global batch {args.batch} of {args.crop}x{args.crop} crops, {args.device}")
    print(f"1 worker : {one['images_per_s']:.2f} images/s")
    print(f"2 workers: {two[0]['images_per_s']:.2f} images/s (ratio {two[0]['images_per_s'] / one['images_per_s']:.2f})")


if __name__ == "__main__":
    main()
