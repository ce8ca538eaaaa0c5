"""How long a quality table takes: each method's training iteration timed for a few steps on
this machine, extrapolated to the table's runs (``quality_camvid.py --plan N``)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from advseg_utils import Segmenter, build_model, evaluate, load_datasets, split_ids, training_stream
from camvid_profiles import CPU, SETTINGS, Profile, experiment_config


def plan(probe_steps: int, steps: int, seeds: list[int], settings: list[str], data_dir: Path, profile: Profile = CPU) -> str:
    """Times each method's training iteration and extrapolates to the table's runs.

    The networks, streams and evaluation are those :func:`run_experiment` builds
    (:func:`build_model`, :func:`training_stream`, :func:`evaluate`). The methods take turns,
    ``probe_steps`` iterations at a time over three rounds, so that a load on a shared machine
    hits them alike; the median round counts. A run's fixed part: building the networks, the
    first iteration (tracing) and the evaluation on the val set (the batch-norm re-estimation,
    one forward pass over a few dozen crops, is left out)."""
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
            fixed[method] = building + time.perf_counter() - start
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
    cost = {method: (fixed[method] + evaluation, statistics.median(times)) for method, times in rounds.items()}
    lines = [f"{'method':<12}{'fixed s':>9}{'s/iteration':>13}{f'run of {steps}, min':>18}"]
    for method, (overhead, per_step) in cost.items():
        lines.append(f"{method:<12}{overhead:>9.1f}{per_step:>13.3f}{(overhead + steps * per_step) / 60:>18.1f}")
    total = sum(cost[SETTINGS[s].method][0] + steps * cost[SETTINGS[s].method][1] for s in settings) * len(seeds)
    lines.append(f"{len(settings) * len(seeds)} runs of {steps} iterations: about {total / 60:.0f} min")
    return "\n".join(lines)
