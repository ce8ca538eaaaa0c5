"""Peak memory of a smoke training run, per method.

Each run is the notebooks' smoke configuration (``ADVSEG_SMOKE=1``: the bundled sample data,
64x64 crops, batch 2, 8 iterations, then whole-image evaluation) executed by
:func:`advseg_utils.experiment.run_experiment` in a fresh Python process, whose peak resident
set size (``VmHWM``) is the figure. The reference, measured the same way in the same run,
is a process that imports TensorFlow and the package and loads the sample data without
training: the difference is what the networks, optimisers, training and evaluation add. Where
TensorFlow sees a GPU, the GPU's peak allocation is reported too.

    python benchmarks/bench_memory.py [--quick]

``--quick`` measures the semi-supervised run (the largest) and the reference only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from machine_info import machine

METHODS = ("baseline", "adversarial", "semi")
REFERENCE = "reference"

#: Defines ``peak_rss_mib()``: the peak resident set of this process's own address space. Not
#: ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so a child of a
#: process holding 2 GB reported 2 GB whatever it did itself.
PEAK_RSS = """
import resource, sys
def peak_rss_mib():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except OSError:  # no /proc: macOS counts ru_maxrss in bytes, others in KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
"""

CHILD = PEAK_RSS + """
import json
import tensorflow as tf
from advseg_utils.config import ExperimentConfig, configure
from advseg_utils.experiment import load_datasets, run_experiment

method = sys.argv[1]
config = configure(ExperimentConfig(name="memory-" + method, method=method if method != "reference" else "baseline",
                                    labeled_fraction=0.5))
if method == "reference":
    load_datasets(config)
else:
    run_experiment(config)
gpu_peak = None
if tf.config.list_physical_devices("GPU"):
    gpu_peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
print(json.dumps({"peak_rss_mib": peak_rss_mib(), "gpu_peak_mib": gpu_peak}))
"""


def peak_memory(method: str) -> dict:
    """{"peak_rss_mib", "gpu_peak_mib"} of one smoke run (or of the reference) in its own process."""
    env = {**os.environ, "ADVSEG_SMOKE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, method], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the smoke run of {method!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    """{"peak_rss_mib": {run: MiB}, "above_reference_mib": {method: MiB}, "gpu_peak_mib": ...}."""
    methods = ("semi",) if quick else METHODS
    measured = {name: peak_memory(name) for name in (REFERENCE, *methods)}
    rss = {name: figures["peak_rss_mib"] for name, figures in measured.items()}
    results = {
        "peak_rss_mib": rss,
        "above_reference_mib": {m: rss[m] - rss[REFERENCE] for m in methods},
    }
    gpu = {name: figures["gpu_peak_mib"] for name, figures in measured.items() if figures["gpu_peak_mib"] is not None}
    if gpu:
        results["gpu_peak_mib"] = gpu
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the semi-supervised run and the reference only")
    args = parser.parse_args()
    print(f"bench_memory.py, {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}")
    results = run(args.quick)
    print(f"  {'run':<14}{'peak RSS (MiB)':>16}{'above reference':>18}")
    for name, mib in results["peak_rss_mib"].items():
        above = results["above_reference_mib"].get(name)
        print(f"  {name:<14}{mib:>16.0f}{'' if above is None else f'{above:>17.0f}'}")
    if "gpu_peak_mib" in results:
        print(f"  GPU peak allocation (MiB): {results['gpu_peak_mib']}")


if __name__ == "__main__":
    main()
