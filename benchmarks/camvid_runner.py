"""Training the quality tables' runs: each (setting, seed) is
:func:`advseg_utils.experiment.run_experiment` on its profile's configuration, its result
written atomically and its checkpoints dropped once written; a run with a result is skipped,
an interrupted one resumes from its checkpoint."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
import traceback
from pathlib import Path

from advseg_utils import run_experiment
from camvid_profiles import CPU, SCRIPT, SETTINGS, Profile, command, experiment_config, portable
from camvid_results import result_path, write_json_atomically
from machine_info import machine


def run_one(
    setting: str, seed: int, steps: int, results_dir: Path, data_dir: Path, runs_dir: Path, profile: Profile = CPU
) -> dict:
    """Trains and evaluates one (setting, seed) on the downscaled CamVid in ``data_dir``, with its
    checkpoints under ``runs_dir`` (removed once the result is written), or reads its result if
    it exists. The profile's ``recalibrate_batchnorm`` makes run_experiment re-estimate G's
    batch-norm statistics before the evaluation that counts."""
    path = result_path(results_dir, setting, seed, steps)
    if path.exists():
        print(f"{setting} seed {seed}: done before, {path.name}")
        return json.loads(path.read_text())
    run_dir = runs_dir / f"{setting}-seed{seed}-{steps}steps"
    config = experiment_config(setting, seed, steps, data_dir, results_dir, run_dir, profile)
    print(f"\n{setting} seed {seed}: {config.describe()}\n  {command([setting], [seed], steps, profile, results_dir)}", flush=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    result = run_experiment(config, verbose=2)
    wall_time = time.perf_counter() - start
    result["config"] = {
        **result["config"],
        "data_dir": f"CamVid at {profile.image_size[0]}x{profile.image_size[1]}, made by {SCRIPT} from ../shared/data/camvid",
        "split_file": portable(config.split_file) if config.labeled_fraction < 1 else None,
        "checkpoint_dir": portable(config.checkpoint_dir),
    }
    record = {
        "setting": setting,
        "method": config.method,
        "labels": SETTINGS[setting].labels,
        "seed": seed,
        "steps": steps,
        "profile": profile.name,
        "setup": profile.setup,
        "command": command([setting], [seed], steps, profile, results_dir),
        **result,
        "wall_time_s": wall_time,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": {"start": load_before, "end": os.getloadavg()[0]},
    }
    write_json_atomically(path, record)
    shutil.rmtree(run_dir, ignore_errors=True)  # the result is written: the checkpoints are done with
    print(f"{setting} seed {seed}: val mean IoU {record['mean_iou']:.4f}, {wall_time / 60:.1f} min -> {path}", flush=True)
    return record


def run_table(
    settings: list[str], seeds: list[int], steps: int, results_dir: Path, data_dir: Path, runs_dir: Path, profile: Profile
) -> list[str]:
    """:func:`run_one` for every setting and seed, seed-major (an interrupted table is complete
    for the first seeds); a failed run (e.g. a diverged one) is reported and the others go on.
    Returns the commands that resume the failed runs."""
    failed = []
    for seed in seeds:
        for setting in settings:
            try:
                run_one(setting, seed, steps, results_dir, data_dir, runs_dir, profile)
            except Exception:
                traceback.print_exc()
                failed.append(command([setting], [seed], steps, profile, results_dir))
    return failed
