"""The benchmark scripts' own logic, without training: the quality table's run list and
configurations, its result files, table and plot (on fake results), the downscaled CamVid copy,
and which benchmarks run_all runs with which flags."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_memory  # noqa: E402
import quality_camvid as qc  # noqa: E402
import run_all  # noqa: E402
from advseg_utils.datasets import CAMVID_CLASSES  # noqa: E402


def fake_record(setting: str, seed: int, steps: int, mean_iou: float) -> dict:
    per_class = {name: (None if name == "bicyclist" else mean_iou) for name in CAMVID_CLASSES}
    return {
        "setting": setting,
        "method": qc.SETTINGS[setting].method,
        "labels": qc.SETTINGS[setting].labels,
        "seed": seed,
        "steps": steps,
        "mean_iou": mean_iou,
        "per_class_iou": per_class,
        "wall_time_s": 120.0,
        "machine": "test machine",
    }


def write_fake_results(results_dir: Path, scores: dict[tuple[str, int], float], steps: int = 600) -> None:
    for (setting, seed), score in scores.items():
        qc.write_json_atomically(qc.result_path(results_dir, setting, seed, steps), fake_record(setting, seed, steps, score))


# --- the run list -----------------------------------------------------------------------------


def test_the_table_has_the_issues_sixteen_runs():
    rows = {(s.method, s.labels) for s in qc.SETTINGS.values()}
    expected = {(m, f) for m in ("baseline", "adversarial", "semi") for f in ("1/8", "1/4")}
    expected |= {("baseline", "all"), ("adversarial", "all")}
    assert rows == expected and len(qc.SETTINGS) == 8
    assert len(qc.SETTINGS) * len(qc.SEEDS) == 16


@pytest.mark.parametrize("setting", list(qc.SETTINGS))
def test_every_setting_is_a_valid_from_scratch_camvid_config(setting, tmp_path):
    config = qc.experiment_config(setting, 1, 600, tmp_path / "data", tmp_path / "results", tmp_path / "run")
    row = qc.SETTINGS[setting]
    assert (config.method, config.labeled_fraction, config.seed, config.steps) == (row.method, row.labeled_fraction, 1, 600)
    assert config.dataset == "camvid" and config.weights is None and not config.freeze_batchnorm
    assert config.semi_start == 300
    assert config.run_dir == tmp_path / "run"


def test_methods_at_one_fraction_and_seed_share_their_split_file(tmp_path):
    def split(setting, seed):
        return qc.experiment_config(setting, seed, 600, tmp_path, tmp_path / "results", tmp_path).split_path

    assert split("baseline-1of8", 0) == split("adversarial-1of8", 0) == split("semi-1of8", 0)
    assert split("semi-1of8", 0) != split("semi-1of8", 1) != split("semi-1of4", 1)
    assert split("semi-1of8", 0).parent == tmp_path / "results" / "splits"


def test_command_reproduces_the_runs_it_names(tmp_path, monkeypatch):
    line = qc.command(["semi-1of8", "baseline-all"], [0, 1], 600)
    assert line == "python benchmarks/quality_camvid.py --only semi-1of8 baseline-all --seeds 0 1 --steps 600"
    calls = []
    monkeypatch.setattr(qc, "run_one", lambda setting, seed, steps, *dirs_and_profile: calls.append((setting, seed, steps)))
    monkeypatch.setattr(qc, "downscaled_camvid", lambda source, target, size: target)
    qc.main([*line.split()[2:], "--results-dir", str(tmp_path), "--work-dir", str(tmp_path)])
    assert calls == [("semi-1of8", 0, 600), ("baseline-all", 0, 600), ("semi-1of8", 1, 600), ("baseline-all", 1, 600)]


# --- runs and their result files ----------------------------------------------------------------


def test_main_runs_seed_major_and_keeps_going_after_a_failure(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_one(setting, seed, steps, results_dir, data_dir, runs_dir, profile):
        calls.append((setting, seed, steps))
        if setting == "semi-1of8":
            raise FloatingPointError("loss_seg is nan")
        return {}

    monkeypatch.setattr(qc, "run_one", fake_run_one)
    monkeypatch.setattr(qc, "downscaled_camvid", lambda source, target, size: target)
    argv = ["--only", "baseline-all", "semi-1of8", "--seeds", "3", "4", "--steps", "7", "--results-dir", str(tmp_path), "--work-dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit, match="--only semi-1of8 --seeds 3 --steps 7"):
        qc.main(argv)
    assert calls == [("baseline-all", 3, 7), ("semi-1of8", 3, 7), ("baseline-all", 4, 7), ("semi-1of8", 4, 7)]


def test_gpu_profile_trains_full_size_camvid_at_the_papers_setting_in_its_own_folders(tmp_path, monkeypatch):
    gpu = qc.PROFILES["gpu"]
    config = qc.experiment_config("semi-1of8", 0, 5000, tmp_path, tmp_path / "results", tmp_path / "run", gpu)
    assert (config.crop_size, config.batch_size, config.discriminator) == (321, 10, "paper")
    assert config.weights is None and config.semi_start == 2500 and config.precision == "mixed_float16"
    assert gpu.image_size == (480, 360) and gpu.results_dir != qc.CPU.results_dir
    runs = []
    monkeypatch.setattr(qc, "run_one", lambda setting, seed, steps, results, data, runs_dir, profile: runs.append(
        (steps, results, data.name, runs_dir.name, profile.name)))  # fmt: skip
    monkeypatch.setattr(qc, "downscaled_camvid", lambda source, target, size: target if size == (480, 360) else None)
    qc.main(["--profile", "gpu", "--only", "semi-1of8", "--seeds", "0", "--work-dir", str(tmp_path)])
    assert runs == [(5000, gpu.results_dir, "camvid-480x360", "runs-gpu", "gpu")]
    assert qc.command(["semi-1of8"], [0], 5000, gpu).startswith("python benchmarks/quality_camvid.py --profile gpu --only")


def test_commands_name_a_results_folder_other_than_the_profiles(tmp_path, monkeypatch):
    assert "--results-dir" not in qc.command(["semi-1of8"], [0], 20, results_dir=qc.CPU.results_dir)
    elsewhere = qc.RESULTS_ROOT / "camvid_long"
    line = qc.command(["semi-1of8"], [0], 1600, results_dir=elsewhere)
    assert line == "python benchmarks/quality_camvid.py --results-dir benchmarks/results/camvid_long --only semi-1of8 --seeds 0 --steps 1600"
    runs = []
    monkeypatch.setattr(qc, "run_one", lambda setting, seed, steps, results, *rest: runs.append(results.resolve()))
    monkeypatch.setattr(qc, "downscaled_camvid", lambda source, target, size: target)
    monkeypatch.setattr(qc, "report", lambda *args: "")
    monkeypatch.chdir(qc.PROJECT_ROOT)  # the commands are run from the project root
    qc.main([*line.split()[2:], "--work-dir", str(tmp_path)])
    assert runs == [elsewhere.resolve()]
    write_fake_results(tmp_path, {("baseline-1of8", 0): 0.4})
    assert "--results-dir <outside the project>/" in qc.table(qc.load_results(tmp_path, 600), 600, tmp_path)


def test_table_titles_and_commands_follow_the_results_profile(tmp_path):
    record = {**fake_record("semi-1of8", 0, 50, 0.4), "profile": "gpu", "setup": qc.PROFILES["gpu"].setup}
    qc.write_json_atomically(qc.result_path(tmp_path, "semi-1of8", 0, 50), record)
    text = qc.table(qc.load_results(tmp_path, 50), 50)
    assert "CamVid 480x360" in text and "crops 321, batch 10" in text
    assert "--profile gpu --only semi-1of8 --seeds 0 --steps 50" in text


def test_run_one_skips_a_finished_run(tmp_path, monkeypatch):
    write_fake_results(tmp_path, {("semi-1of4", 1): 0.5}, steps=9)
    monkeypatch.setattr(qc, "run_experiment", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert qc.run_one("semi-1of4", 1, 9, tmp_path, tmp_path / "data", tmp_path / "runs")["mean_iou"] == 0.5


def test_run_one_writes_a_portable_result_and_drops_the_checkpoints(tmp_path, monkeypatch):
    seen = {}

    def fake_run_experiment(config, verbose=0):
        seen["config"] = config
        Path(config.checkpoint_dir).mkdir(parents=True)
        return {"config": {"data_dir": config.data_dir, "split_file": config.split_file, "checkpoint_dir": config.checkpoint_dir},
                "mean_iou": 0.25, "pixel_accuracy": 0.75, "per_class_iou": {}}  # fmt: skip

    def fake_recalibrated_evaluation(config):
        assert Path(config.checkpoint_dir).is_dir()  # before the checkpoints go
        return {"mean_iou": 0.5, "pixel_accuracy": 0.9, "per_class_iou": {"sky": 0.5}}

    monkeypatch.setattr(qc, "run_experiment", fake_run_experiment)
    monkeypatch.setattr(qc, "recalibrated_evaluation", fake_recalibrated_evaluation)
    record = qc.run_one("semi-1of8", 0, 20, tmp_path / "results", tmp_path / "data", tmp_path / "runs")
    written = json.loads(qc.result_path(tmp_path / "results", "semi-1of8", 0, 20).read_text())
    assert written == record and record["wall_time_s"] >= 0
    assert record["mean_iou"] == 0.5 and record["per_class_iou"] == {"sky": 0.5}
    assert record["run_experiment_evaluation"]["mean_iou"] == 0.25
    assert record["command"] == qc.command(["semi-1of8"], [0], 20, results_dir=tmp_path / "results") and record["machine"]
    assert "--results-dir <outside the project>/" in record["command"]  # the folder is named, not the machine path
    assert str(tmp_path) not in json.dumps(written)  # no machine paths in result files
    assert seen["config"].semi_start == 10
    assert not Path(seen["config"].checkpoint_dir).exists()
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["semi-1of8-seed0-20steps.json"]  # no partial files


# --- table and plot ------------------------------------------------------------------------------


def test_table_gives_mean_std_and_range_per_setting_with_its_command(tmp_path):
    write_fake_results(tmp_path, {("baseline-1of8", 0): 0.40, ("baseline-1of8", 1): 0.44, ("semi-1of8", 0): 0.50})
    write_fake_results(tmp_path, {("baseline-1of8", 2): 0.10}, steps=50)  # another length: not in this table
    results = qc.load_results(tmp_path, 600)  # 600: any length
    assert list(results) == ["baseline-1of8", "semi-1of8"]
    text = qc.table(results, 600)
    std = 100 * statistics.stdev([0.40, 0.44])  # 2.83
    assert f"| baseline | 1/8 | 2 | 42.0 | {std:.1f} | 40.0 - 44.0 | 2.0 | `{qc.command(['baseline-1of8'], [0, 1], 600)}` |" in text
    assert "| + adversarial + semi | 1/8 | 1 | 50.0 | 0.0 | 50.0 - 50.0 |" in text
    assert "| baseline | 1/8 | 42.0 |" in text and text.rstrip().count("| - |") == 2  # bicyclist never present


def test_table_without_results_says_how_to_make_them(tmp_path):
    assert "--steps 600" in qc.table(qc.load_results(tmp_path, 600), 600)


def test_report_writes_the_plot_beside_the_results_folder(tmp_path):
    results_dir = tmp_path / "camvid"
    scores = {(setting, seed): 0.3 + 0.01 * seed for setting in qc.SETTINGS for seed in (0, 1)}
    write_fake_results(results_dir, scores)
    text = qc.report(results_dir, 600)
    assert text.count("`python benchmarks/quality_camvid.py") == len(qc.SETTINGS)
    assert text.endswith("camvid_miou.png")
    png = tmp_path / "camvid_miou.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camvid", "camvid_miou.png"]


def test_kept_reports_print_every_kept_table_that_has_results(tmp_path, monkeypatch):
    short, long, empty = tmp_path / "camvid", tmp_path / "camvid_long", tmp_path / "camvid_gpu"
    monkeypatch.setattr(qc, "KEPT_TABLES", ((short, 400), (long, 1600), (empty, 5000)))
    write_fake_results(short, {("baseline-1of8", 0): 0.3}, steps=400)
    write_fake_results(long, {("semi-1of8", 0): 0.4}, steps=1600)
    write_fake_results(long, {("semi-1of8", 1): 0.1}, steps=400)  # not the long table's length
    text = qc.kept_reports()
    assert text.count("Val mean IoU (%)") == 2 and ", 400 iterations" in text and ", 1600 iterations" in text
    assert "| + adversarial + semi | 1/8 | 1 | 40.0 |" in text
    assert "camvid_gpu" not in text and not (tmp_path / "camvid_gpu_miou.png").exists()
    assert (tmp_path / "camvid_long_miou.png").exists()


# --- the downscaled CamVid -------------------------------------------------------------------------


def fake_camvid(source: Path) -> Path:
    """A CamVid-shaped folder: train a, b and val c, 48x36, labels 0, 3 and 11."""
    rng = np.random.default_rng(0)
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (source / "images" / split).mkdir(parents=True)
        (source / "labels" / split).mkdir(parents=True)
        (source / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(source / "images" / split / f"{name}.jpg")
            labels = rng.choice(np.array([0, 3, 11], np.uint8), (36, 48))
            Image.fromarray(labels).save(source / "labels" / split / f"{name}.png")
    return source


def test_downscaled_camvid_halves_images_and_keeps_label_values(tmp_path):
    source = fake_camvid(tmp_path / "camvid")
    target = qc.downscaled_camvid(source, tmp_path / "work" / "small", size=(24, 18))
    with Image.open(target / "images" / "train" / "a.jpg") as image:
        assert image.size == (24, 18)
    labels = np.asarray(Image.open(target / "labels" / "val" / "c.png"))
    assert labels.shape == (18, 24) and set(np.unique(labels)) <= {0, 3, 11}
    assert (target / "val.txt").read_text() == "c\n"
    (source / "train.txt").unlink()  # made once: a second call does not read the source again
    assert qc.downscaled_camvid(source, target, size=(24, 18)) == target
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["small"]  # no partial folder left


def test_downscaled_camvid_uses_the_copy_a_parallel_run_finished_first(tmp_path, monkeypatch):
    source, target = fake_camvid(tmp_path / "camvid"), tmp_path / "work" / "small"
    read_list = qc.read_list

    def other_run_finishes_meanwhile(path):
        if not target.exists():
            target.mkdir()
            (target / "train.txt").write_text("theirs\n")
        return read_list(path)

    monkeypatch.setattr(qc, "read_list", other_run_finishes_meanwhile)
    assert qc.downscaled_camvid(source, target, size=(24, 18)) == target
    assert (target / "train.txt").read_text() == "theirs\n"
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["small"]  # our partial copy is gone


# --- run_all ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_benchmarks(monkeypatch):
    """Records how run_all calls each benchmark (and what it would write) instead of running them."""
    calls = {}

    def train(quick, gpu):
        calls["train"] = (quick, gpu)
        if gpu:
            raise SystemExit("--gpu: no GPU visible to TensorFlow")
        return {"images_per_s": 1.5}

    def record(name, value):
        calls[name] = value
        return {}

    monkeypatch.setattr(run_all.bench_pipeline, "run", lambda quick: record("pipeline", quick))
    monkeypatch.setattr(run_all.bench_eval, "run", lambda quick: record("eval", quick))
    monkeypatch.setattr(run_all.bench_memory, "run", lambda quick: record("memory", quick))
    monkeypatch.setattr(run_all.bench_train, "run", train)
    monkeypatch.setattr(run_all.quality_camvid, "main", lambda argv: record("quality_runs", argv))
    monkeypatch.setattr(run_all.quality_camvid, "kept_reports", lambda: "TABLE")
    monkeypatch.setattr(run_all.quality_camvid, "write_json_atomically", lambda path, data: record("written", (path.name, data)))  # fmt: skip
    return calls


def test_run_all_quick_runs_every_benchmark_and_only_tabulates_quality(fake_benchmarks, capsys):
    assert run_all.main(["--quick"]) == 0
    assert fake_benchmarks["pipeline"] is True and fake_benchmarks["eval"] is True and fake_benchmarks["memory"] is True
    assert fake_benchmarks["train"] == (True, False)
    assert "quality_runs" not in fake_benchmarks  # no training without --quality
    name, record = fake_benchmarks["written"]
    assert name == "run_all_quick.json" and record["train"]["images_per_s"] == 1.5 and record["machine"]
    out = capsys.readouterr().out
    assert "images_per_s: 1.5" in out and "TABLE" in out


def test_run_all_gpu_reaches_bench_train_and_reports_its_failure(fake_benchmarks):
    assert run_all.main(["--gpu", "--quality"]) == 1
    assert fake_benchmarks["train"] == (False, True)
    name, record = fake_benchmarks["written"]
    assert name == "run_all_gpu.json" and "no GPU" in record["train"]["error"]
    assert fake_benchmarks["quality_runs"] == []


# --- bench_memory -------------------------------------------------------------------------------------


def test_bench_memory_subtracts_the_reference_process(monkeypatch):
    peaks = {"reference": 500.0, "baseline": 900.0, "adversarial": 1100.0, "semi": 1600.0}
    monkeypatch.setattr(bench_memory, "peak_memory", lambda name: {"peak_rss_mib": peaks[name], "gpu_peak_mib": None})
    figures = bench_memory.run(quick=False)
    assert figures["peak_rss_mib"] == peaks and "gpu_peak_mib" not in figures
    assert figures["above_reference_mib"] == {"baseline": 400.0, "adversarial": 600.0, "semi": 1100.0}
    assert set(bench_memory.run(quick=True)["above_reference_mib"]) == {"semi"}


def test_bench_memory_names_the_run_that_failed(monkeypatch):
    class Failed:
        returncode, stdout, stderr = 1, "", "Traceback ... ValueError: broken"

    monkeypatch.setattr(bench_memory.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match=r"(?s)'semi' failed \(exit 1\).*ValueError: broken"):
        bench_memory.peak_memory("semi")


def test_bench_memory_counts_the_childs_own_memory_not_its_parents():
    """A child started by a process holding 512 MiB must not report the parent's peak
    (ru_maxrss does: Linux carries it through fork and exec, as seen inside run_all)."""
    held = np.ones(2**26)  # 512 MiB, touched
    code = bench_memory.PEAK_RSS + "print(peak_rss_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1 < child < 256 and held.sum() == 2**26
