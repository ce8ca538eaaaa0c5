"""The benchmark scripts' own logic, without training: the quality table's run list and
configurations, its result files, table and plot (on fake results), the downscaled CamVid copy,
and which benchmarks run_all runs with which flags."""
import hashlib
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
import camvid_data  # noqa: E402
import camvid_plots  # noqa: E402
import camvid_profiles as profiles  # noqa: E402
import camvid_report  # noqa: E402
import camvid_results as result_files  # noqa: E402
import camvid_runner  # noqa: E402
import camvid_tables  # noqa: E402
import quality_camvid  # noqa: E402
import quality_stats  # noqa: E402
import run_all  # noqa: E402
from advseg_utils import load_datasets  # noqa: E402
from advseg_utils.datasets import CAMVID_CLASSES  # noqa: E402


def fake_record(setting: str, seed: int, steps: int, mean_iou: float) -> dict:
    per_class = {name: (None if name == "bicyclist" else mean_iou) for name in CAMVID_CLASSES}
    return {
        "setting": setting,
        "method": profiles.SETTINGS[setting].method,
        "labels": profiles.SETTINGS[setting].labels,
        "seed": seed,
        "steps": steps,
        "mean_iou": mean_iou,
        "per_class_iou": per_class,
        "wall_time_s": 120.0,
        "machine": "test machine",
        "labeled_images": 46,
        "unlabeled_images": 321,
    }


def write_fake_results(results_dir: Path, scores: dict[tuple[str, int], float], steps: int = 600) -> None:
    for (setting, seed), score in scores.items():
        path = result_files.result_path(results_dir, setting, seed, steps)
        result_files.write_json_atomically(path, fake_record(setting, seed, steps, score))


# --- the run list -----------------------------------------------------------------------------


def rows_of(settings) -> set[tuple[str, str]]:
    return {(profiles.SETTINGS[name].method, profiles.SETTINGS[name].labels) for name in settings}


def test_the_random_weights_table_has_its_sixteen_runs():
    expected = {(m, f) for m in ("baseline", "adversarial", "semi") for f in ("1/8", "1/4")}
    expected |= {("baseline", "all"), ("adversarial", "all")}
    for profile in (profiles.CPU, profiles.PROFILES["gpu"]):
        assert rows_of(profile.settings) == expected and len(profile.settings) * len(profile.seeds) == 16


def test_the_imagenet_table_has_three_methods_at_three_fractions_and_all_labels_three_seeds():
    imagenet = profiles.PROFILES["imagenet"]
    expected = {(m, f) for m in ("baseline", "adversarial", "semi") for f in ("1/32", "1/16", "1/8")}
    expected |= {("baseline", "all"), ("adversarial", "all")}
    assert rows_of(imagenet.settings) == expected and len(imagenet.seeds) == 3
    assert len(imagenet.settings) * len(imagenet.seeds) == 33
    assert imagenet.results_dir != profiles.CPU.results_dir and imagenet.results_dir in {d for d, _ in profiles.KEPT_TABLES}


def test_imagenet_profile_is_the_papers_recipe_from_imagenet_weights_with_a_10x_learning_rate(tmp_path):
    imagenet = profiles.PROFILES["imagenet"]
    config = profiles.experiment_config("semi-1of16", 2, 800, tmp_path, tmp_path / "results", tmp_path / "run", imagenet)
    assert imagenet.settings[0] == "baseline-all"  # trained first: every fraction's headroom needs it
    assert (config.backbone, config.weights, config.freeze_batchnorm) == ("efficientnet_lite0", "imagenet", True)
    # G's rate is 10x the paper's (measured for 600 iterations, quality_camvid.py says); D's and the head's are its own
    assert (config.learning_rate_g, config.learning_rate_d, config.head_lr_multiplier) == (2.5e-3, 1e-4, 10.0)
    assert (config.lambda_adv, config.lambda_semi_adv, config.lambda_semi, config.t_semi) == (0.01, 0.001, 0.1, 0.2)
    assert config.discriminator == "paper" and config.semi_start == 200  # a quarter of the run
    assert config.recalibrate_batchnorm == 0  # the frozen ImageNet backbone keeps its batch-norm statistics
    assert config.labeled_fraction == 1 / 16 and config.seed == 2
    assert "from imagenet weights" in imagenet.setup and "from scratch" in profiles.CPU.setup


@pytest.mark.parametrize("setting", list(profiles.SETTINGS))
def test_every_setting_is_a_valid_from_scratch_camvid_config(setting, tmp_path):
    config = profiles.experiment_config(setting, 1, 600, tmp_path / "data", tmp_path / "results", tmp_path / "run")
    row = profiles.SETTINGS[setting]
    assert (config.method, config.labeled_fraction, config.seed, config.steps) == (row.method, row.labeled_fraction, 1, 600)
    assert config.dataset == "camvid" and config.weights is None and not config.freeze_batchnorm
    assert config.recalibrate_batchnorm == 64  # trained batch norms re-estimated before the evaluation
    assert config.semi_start == 300
    assert config.run_dir == tmp_path / "run"


def test_methods_at_one_fraction_and_seed_share_their_split_file(tmp_path):
    def split(setting, seed):
        return profiles.experiment_config(setting, seed, 600, tmp_path, tmp_path / "results", tmp_path).split_path

    assert split("baseline-1of8", 0) == split("adversarial-1of8", 0) == split("semi-1of8", 0)
    assert split("semi-1of8", 0) != split("semi-1of8", 1) != split("semi-1of4", 1)
    assert split("semi-1of8", 0).parent == tmp_path / "results" / "splits"


def test_command_reproduces_the_runs_it_names(tmp_path, monkeypatch):
    line = profiles.command(["semi-1of8", "baseline-all"], [0, 1], 600)
    assert line == "python benchmarks/quality_camvid.py --only semi-1of8 baseline-all --seeds 0 1 --steps 600"
    calls = []
    monkeypatch.setattr(camvid_runner, "run_one", lambda setting, seed, steps, *dirs_and_profile: calls.append((setting, seed, steps)))
    monkeypatch.setattr(quality_camvid, "downscaled_camvid", lambda source, target, size: target)
    quality_camvid.main([*line.split()[2:], "--results-dir", str(tmp_path), "--work-dir", str(tmp_path)])
    assert calls == [("semi-1of8", 0, 600), ("baseline-all", 0, 600), ("semi-1of8", 1, 600), ("baseline-all", 1, 600)]


# --- runs and their result files ----------------------------------------------------------------


def test_main_runs_seed_major_and_keeps_going_after_a_failure(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_one(setting, seed, steps, results_dir, data_dir, runs_dir, profile):
        calls.append((setting, seed, steps))
        if setting == "semi-1of8":
            raise FloatingPointError("loss_seg is nan")
        return {}

    monkeypatch.setattr(camvid_runner, "run_one", fake_run_one)
    monkeypatch.setattr(quality_camvid, "downscaled_camvid", lambda source, target, size: target)
    argv = ["--only", "baseline-all", "semi-1of8", "--seeds", "3", "4", "--steps", "7", "--results-dir", str(tmp_path), "--work-dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit, match="--only semi-1of8 --seeds 3 --steps 7"):
        quality_camvid.main(argv)
    assert calls == [("baseline-all", 3, 7), ("semi-1of8", 3, 7), ("baseline-all", 4, 7), ("semi-1of8", 4, 7)]


def test_gpu_profile_trains_full_size_camvid_at_the_papers_setting_in_its_own_folders(tmp_path, monkeypatch):
    gpu = profiles.PROFILES["gpu"]
    config = profiles.experiment_config("semi-1of8", 0, 5000, tmp_path, tmp_path / "results", tmp_path / "run", gpu)
    assert (config.crop_size, config.batch_size, config.discriminator) == (321, 10, "paper")
    assert config.weights is None and config.semi_start == 2500 and config.precision == "mixed_float16"
    assert gpu.image_size == (480, 360) and gpu.results_dir != profiles.CPU.results_dir
    runs = []
    monkeypatch.setattr(camvid_runner, "run_one", lambda setting, seed, steps, results, data, runs_dir, profile: runs.append(
        (steps, results, data.name, runs_dir.name, profile.name)))  # fmt: skip
    monkeypatch.setattr(quality_camvid, "downscaled_camvid", lambda source, target, size: target if size == (480, 360) else None)
    quality_camvid.main(["--profile", "gpu", "--only", "semi-1of8", "--seeds", "0", "--work-dir", str(tmp_path)])
    assert [(s, r, d.startswith("camvid-480x360-"), n, p) for s, r, d, n, p in runs] == [
        (5000, gpu.results_dir, True, "runs-gpu", "gpu")
    ]
    assert profiles.command(["semi-1of8"], [0], 5000, gpu).startswith("python benchmarks/quality_camvid.py --profile gpu --only")


def test_commands_name_a_results_folder_other_than_the_profiles(tmp_path, monkeypatch):
    assert "--results-dir" not in profiles.command(["semi-1of8"], [0], 20, results_dir=profiles.CPU.results_dir)
    elsewhere = profiles.RESULTS_ROOT / "camvid_long"
    line = profiles.command(["semi-1of8"], [0], 1600, results_dir=elsewhere)
    assert line == "python benchmarks/quality_camvid.py --results-dir benchmarks/results/camvid_long --only semi-1of8 --seeds 0 --steps 1600"
    runs = []
    monkeypatch.setattr(camvid_runner, "run_one", lambda setting, seed, steps, results, *rest: runs.append(results.resolve()))
    monkeypatch.setattr(quality_camvid, "downscaled_camvid", lambda source, target, size: target)
    monkeypatch.setattr(quality_camvid, "report", lambda *args: "")
    monkeypatch.chdir(profiles.PROJECT_ROOT)  # the commands are run from the project root
    quality_camvid.main([*line.split()[2:], "--work-dir", str(tmp_path)])
    assert runs == [elsewhere.resolve()]
    write_fake_results(tmp_path, {("baseline-1of8", 0): 0.4})
    assert "--results-dir <outside the project>/" in camvid_tables.table(result_files.load_results(tmp_path, 600), 600, tmp_path)


def test_table_titles_and_commands_follow_the_results_profile(tmp_path):
    record = {**fake_record("semi-1of8", 0, 50, 0.4), "profile": "gpu", "setup": profiles.PROFILES["gpu"].setup}
    result_files.write_json_atomically(result_files.result_path(tmp_path, "semi-1of8", 0, 50), record)
    text = camvid_tables.table(result_files.load_results(tmp_path, 50), 50)
    assert "CamVid 480x360" in text and "crops 321, batch 10" in text
    assert "--profile gpu --only semi-1of8 --seeds 0 --steps 50" in text


def test_run_one_skips_a_finished_run(tmp_path, monkeypatch):
    write_fake_results(tmp_path, {("semi-1of4", 1): 0.5}, steps=9)
    monkeypatch.setattr(camvid_runner, "run_experiment", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert camvid_runner.run_one("semi-1of4", 1, 9, tmp_path, tmp_path / "data", tmp_path / "runs")["mean_iou"] == 0.5


def test_run_one_writes_a_portable_result_and_drops_the_checkpoints(tmp_path, monkeypatch):
    seen = {}

    def fake_run_experiment(config, verbose=0):
        seen["config"] = config
        Path(config.checkpoint_dir).mkdir(parents=True)
        return {"config": {"data_dir": config.data_dir, "split_file": config.split_file, "checkpoint_dir": config.checkpoint_dir},
                "mean_iou": 0.5, "pixel_accuracy": 0.9, "per_class_iou": {"sky": 0.5}}  # fmt: skip

    monkeypatch.setattr(camvid_runner, "run_experiment", fake_run_experiment)
    record = camvid_runner.run_one("semi-1of8", 0, 20, tmp_path / "results", tmp_path / "data", tmp_path / "runs")
    written = json.loads(result_files.result_path(tmp_path / "results", "semi-1of8", 0, 20).read_text())
    assert written == record and record["wall_time_s"] >= 0
    assert record["mean_iou"] == 0.5 and record["per_class_iou"] == {"sky": 0.5}
    # the scores that count: run_experiment's, after it re-estimated G's batch norms on 64 training crops
    assert seen["config"].recalibrate_batchnorm == 64
    assert record["command"] == profiles.command(["semi-1of8"], [0], 20, results_dir=tmp_path / "results") and record["machine"]
    assert "--results-dir <outside the project>/" in record["command"]  # the folder is named, not the machine path
    assert str(tmp_path) not in json.dumps(written)  # no machine paths in result files
    assert seen["config"].semi_start == 10
    assert not Path(seen["config"].checkpoint_dir).exists()
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["semi-1of8-seed0-20steps.json"]  # no partial files


# --- table and plot ------------------------------------------------------------------------------


def test_table_gives_mean_std_and_range_per_setting_with_its_command(tmp_path):
    write_fake_results(tmp_path, {("baseline-1of8", 0): 0.40, ("baseline-1of8", 1): 0.44, ("semi-1of8", 0): 0.50})
    write_fake_results(tmp_path, {("baseline-1of8", 2): 0.10}, steps=50)  # another length: not in this table
    results = result_files.load_results(tmp_path, 600)  # 600: any length
    assert list(results) == ["baseline-1of8", "semi-1of8"]
    text = camvid_tables.table(results, 600)
    std = 100 * statistics.stdev([0.40, 0.44])  # 2.83
    assert f"| baseline | 1/8 | 2 | 42.0 | {std:.1f} | 40.0 (0), 44.0 (1) | 2.0 | `{profiles.command(['baseline-1of8'], [0, 1], 600)}` |" in text
    assert "| + adversarial + semi | 1/8 | 1 | 50.0 | 0.0 | 50.0 (0) |" in text
    assert "| baseline | 1/8 | 42.0 |" in text and text.rstrip().count("| - |") == 2  # bicyclist never present


def imagenet_results(results_dir: Path, steps: int = 600) -> None:
    """Fabricated ImageNet-table results, three seeds: all-labels baseline 0.58; at 1/8 baseline
    0.50, 0.52, 0.54, + adversarial 0.51, 0.53, 0.56 (every seed +, but within the spread) and
    + semi 0.54, 0.56, 0.58 (every seed +4: beyond it); semi runs log pseudo-label accuracies."""
    scores = {("baseline-all", 0): 0.57, ("baseline-all", 1): 0.58, ("baseline-all", 2): 0.59}
    for seed, (base, adv, semi) in enumerate([(0.50, 0.51, 0.54), (0.52, 0.53, 0.56), (0.54, 0.56, 0.58)]):
        scores |= {("baseline-1of8", seed): base, ("adversarial-1of8", seed): adv, ("semi-1of8", seed): semi}
    for (setting, seed), score in scores.items():
        record = {**fake_record(setting, seed, steps, score), "profile": "imagenet"}
        if setting.startswith("semi"):
            history = {"semi_ratio": [0.3, 0.4], "pseudo_acc_all": [0.6, 0.7], "pseudo_acc_kept": [0.7, 0.8 + 0.01 * seed]}
            record |= {"history": history, "final_logs": {name: values[-1] for name, values in history.items()},
                       "config": {"checkpoint_every": 50, "semi_start": 150}}  # fmt: skip
        result_files.write_json_atomically(result_files.result_path(results_dir, setting, seed, steps), record)


def test_headroom_table_gives_the_share_closed_and_which_gains_exceed_the_seed_spread(tmp_path):
    imagenet_results(tmp_path)
    text = camvid_tables.headroom_table(result_files.load_results(tmp_path, 600))
    # headroom 58 - 52 = 6 points; + adversarial gains 1.33 (22%), + semi 4 (67%), semi over adversarial 2.67.
    # Paired t = mean gain / (std of the gains / sqrt 3): 1.33 / (0.577 / 1.732) = 4.0, under 4.30 for
    # 2 degrees of freedom; 2.67 / 0.333 = 8.0; gains of 4, 4, 4 have no spread at all.
    assert "| 1/8 | + adversarial vs baseline | +1.3 | +1.0, +1.0, +2.0 | 6.0 | 22% | no | +4.0 | no |" in text
    assert "| 1/8 | + adversarial + semi vs baseline | +4.0 | +4.0, +4.0, +4.0 | 6.0 | 67% | yes | >100 | yes |" in text
    assert "| 1/8 | + adversarial + semi vs + adversarial | +2.7 | +3.0, +3.0, +2.0 | 6.0 | - | yes | +8.0 | yes |" in text
    assert "1/4" not in text.split("|---|")[-1]  # no row for a fraction without runs
    assert camvid_tables.headroom_table({k: v for k, v in result_files.load_results(tmp_path, 600).items() if k != "baseline-all"}) == ""
    # A gain larger than both spreads (6.6 > 5.8 and 0) is still within the noise when one seed loses.
    steady, one_loses = [fake_record("baseline-1of8", seed, 600, 0.5) for seed in range(3)], [
        fake_record("semi-1of8", seed, 600, score) for seed, score in enumerate((0.499, 0.6, 0.6))
    ]
    assert quality_stats.compare(one_loses, steady)["gain"] > quality_stats.summary(one_loses)["std"]
    assert not quality_stats.compare(one_loses, steady)["beyond_spread"]
    assert quality_stats.compare(one_loses, steady)["paired_t"] == pytest.approx((0.199 / 3) / (statistics.stdev([-0.001, 0.1, 0.1]) / 3**0.5))
    assert not quality_stats.compare(one_loses, steady)["paired_beyond"]  # t = 1.97


def test_the_paired_test_sees_a_steady_gain_that_the_split_spread_hides():
    """Splits that move both settings by 5 points each hide a gain of 2, 2 and 1.5 points from
    the spread test, not from the paired one: t = 1.83 / (0.289 / sqrt 3) = 11.0 > 4.30. With
    two seeds the critical value is 12.71 (1 degree of freedom), so the same gains fall short."""
    baseline = [fake_record("baseline-1of8", seed, 600, score) for seed, score in enumerate((0.40, 0.45, 0.50))]
    semi = [fake_record("semi-1of8", seed, 600, score) for seed, score in enumerate((0.42, 0.47, 0.515))]
    c = quality_stats.compare(semi, baseline)
    assert not c["beyond_spread"] and c["paired_beyond"] and c["paired_t"] == pytest.approx(11.0, abs=0.05)
    assert quality_stats.compare(baseline, semi)["paired_beyond"]  # a steady loss is as clear as a steady gain
    two = quality_stats.compare(semi[:2], baseline[:2])  # gains 2.0 and 2.0 (up to rounding): t huge, passes
    one_off = quality_stats.compare([semi[0], fake_record("semi-1of8", 1, 600, 0.46)], baseline[:2])  # gains 2, 1: t = 3
    assert two["paired_beyond"] and one_off["paired_t"] == pytest.approx(3.0) and not one_off["paired_beyond"]


def test_imagenet_report_has_every_seed_the_headroom_the_pseudo_labels_and_both_plots(tmp_path):
    results_dir = tmp_path / "camvid_imagenet"
    imagenet_results(results_dir)
    text = camvid_report.report(results_dir, 600)
    assert "from imagenet weights" in text and "| baseline | 1/8 | 3 | 52.0 | 2.0 | 50.0 (0), 52.0 (1), 54.0 (2) |" in text
    assert "Headroom closed" in text and "| 1/8 | + adversarial + semi vs baseline | +4.0 |" in text
    assert "| 1/8 | 3 | 40.0 | 70.0 | 81.0 | +11.0 |" in text  # kept share, all, kept, kept - all
    assert "camvid_imagenet_miou.png, " in text and text.endswith("camvid_imagenet_pseudo_labels.png")
    for name in ("camvid_imagenet_miou.png", "camvid_imagenet_pseudo_labels.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300


def test_plot_puts_every_fraction_of_the_results_on_the_x_axis(tmp_path, monkeypatch):
    imagenet_results(tmp_path)
    write_fake_results(tmp_path, {("baseline-1of32", 0): 0.4, ("semi-1of16", 0): 0.45}, steps=600)
    results = result_files.load_results(tmp_path, 600)
    saved = {}
    monkeypatch.setattr(camvid_plots, "_save", lambda fig, path: saved.setdefault("axis", fig.axes[0]))
    camvid_plots.plot(results, 600, tmp_path / "plot.png")
    labels = [tick.get_text() for tick in saved["axis"].get_xticklabels()]
    assert labels == ["1/32", "1/16", "1/8", "all"]
    assert "367 images" in saved["axis"].get_xlabel()


def test_table_without_results_says_how_to_make_them(tmp_path):
    assert "--steps 600" in camvid_tables.table(result_files.load_results(tmp_path, 600), 600)


def test_report_writes_the_plot_beside_the_results_folder(tmp_path):
    results_dir = tmp_path / "camvid"
    scores = {(setting, seed): 0.3 + 0.01 * seed for setting in profiles.SETTINGS for seed in (0, 1)}
    write_fake_results(results_dir, scores)
    text = camvid_report.report(results_dir, 600)
    assert text.count("`python benchmarks/quality_camvid.py") == len(profiles.SETTINGS)
    assert text.endswith("camvid_miou.png")
    png = tmp_path / "camvid_miou.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camvid", "camvid_miou.png"]


def test_kept_reports_print_every_kept_table_that_has_results(tmp_path, monkeypatch):
    short, long, empty = tmp_path / "camvid", tmp_path / "camvid_long", tmp_path / "camvid_gpu"
    monkeypatch.setattr(camvid_report, "KEPT_TABLES", ((short, 400), (long, 1600), (empty, 5000)))
    write_fake_results(short, {("baseline-1of8", 0): 0.3}, steps=400)
    write_fake_results(long, {("semi-1of8", 0): 0.4}, steps=1600)
    write_fake_results(long, {("semi-1of8", 1): 0.1}, steps=400)  # not the long table's length
    text = camvid_report.kept_reports()
    assert text.count("Val mean IoU (%)") == 2 and ", 400 iterations" in text and ", 1600 iterations" in text
    assert "| + adversarial + semi | 1/8 | 1 | 40.0 |" in text
    assert "camvid_gpu" not in text and not (tmp_path / "camvid_gpu_miou.png").exists()
    assert (tmp_path / "camvid_long_miou.png").exists()


# --- the downscaled CamVid -------------------------------------------------------------------------


def fake_camvid(source: Path, val: tuple[str, ...] = ("c",)) -> Path:
    """A CamVid-shaped folder: train a, b and val c (or ``val``), 48x36, labels 0, 3 and 11."""
    rng = np.random.default_rng(0)
    for split, names in (("train", ["a", "b"]), ("val", list(val))):
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
    target = camvid_data.downscaled_camvid(source, tmp_path / "work" / "small", size=(24, 18))
    with Image.open(target / "images" / "train" / "a.jpg") as image:
        assert image.size == (24, 18)
    labels = np.asarray(Image.open(target / "labels" / "val" / "c.png"))
    assert labels.shape == (18, 24) and set(np.unique(labels)) <= {0, 3, 11}
    assert (target / "val.txt").read_text() == "c\n"
    (source / "train.txt").unlink()  # made once: a second call does not read the source again
    assert camvid_data.downscaled_camvid(source, target, size=(24, 18)) == target
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["small"]  # no partial folder left


def test_downscaled_camvid_uses_the_copy_a_parallel_run_finished_first(tmp_path, monkeypatch):
    source, target = fake_camvid(tmp_path / "camvid"), tmp_path / "work" / "small"
    read_list = camvid_data.read_list

    def other_run_finishes_meanwhile(path):
        if not target.exists():
            target.mkdir()
            (target / "train.txt").write_text("theirs\n")
        return read_list(path)

    monkeypatch.setattr(camvid_data, "read_list", other_run_finishes_meanwhile)
    assert camvid_data.downscaled_camvid(source, target, size=(24, 18)) == target
    assert (target / "train.txt").read_text() == "theirs\n"
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["small"]  # our partial copy is gone


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root``: its modification time and (files) content hash."""
    return {
        path.relative_to(root).as_posix(): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder",
        )
        for path in sorted(root.rglob("*"))
    }


def test_another_camvid_root_with_another_val_size_gets_its_own_copy_and_stays_untouched(tmp_path, monkeypatch):
    first, other = fake_camvid(tmp_path / "camvid"), fake_camvid(tmp_path / "other", val=("c", "d", "e"))
    before = tree_state(other)
    data_dirs = []
    monkeypatch.setattr(camvid_runner, "run_one", lambda setting, seed, steps, results, data, *rest: data_dirs.append(data))
    monkeypatch.setattr(quality_camvid, "report", lambda *args: "")
    for root in (first, other, first):
        quality_camvid.main(["--only", "semi-1of8", "--seeds", "0", "--steps", "10", "--camvid", str(root),
                 "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")])  # fmt: skip
    assert data_dirs[0] == data_dirs[2] != data_dirs[1]  # each root its own copy, made once
    config = profiles.experiment_config("semi-1of8", 0, 10, data_dirs[1], tmp_path / "results", tmp_path / "work" / "run")
    train_set, val_set = load_datasets(config)
    assert (len(train_set), len(val_set)) == (2, 3) and list(val_set.ids) == ["c", "d", "e"]
    with Image.open(val_set.image_paths[2]) as image:
        assert image.size == profiles.CPU.image_size
    assert not any(path.is_relative_to(other) for path in (data_dirs[1], config.split_path, config.run_dir))
    assert tree_state(other) == before  # nothing written into the root


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
    monkeypatch.setattr(run_all.bench_export, "run", lambda quick: record("export", quick))
    monkeypatch.setattr(run_all.bench_train, "run", train)
    monkeypatch.setattr(run_all.quality_camvid, "main", lambda argv: record("quality_runs", argv))
    monkeypatch.setattr(run_all.camvid_report, "kept_reports", lambda: "TABLE")
    monkeypatch.setattr(run_all.camvid_results, "write_json_atomically", lambda path, data: record("written", (path.name, data)))  # fmt: skip
    return calls


def test_run_all_quick_runs_every_benchmark_and_only_tabulates_quality(fake_benchmarks, capsys):
    assert run_all.main(["--quick"]) == 0
    assert fake_benchmarks["pipeline"] is True and fake_benchmarks["eval"] is True and fake_benchmarks["memory"] is True
    assert fake_benchmarks["export"] is True
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


def test_what_d_sees_tells_a_d_that_judges_softness_from_its_verdicts():
    """A D that calls a pixel real exactly when its map is one-hot there: the ground truth and
    G's arg-max are judged real everywhere, G's softmax nowhere, and holes count in no share."""
    import tensorflow as tf
    import what_d_sees

    def one_hot_detector(maps, training=False):
        return 100.0 * (tf.reduce_max(maps, axis=-1, keepdims=True) - 0.999)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 8, 8)).astype(np.int32)
    labels[:, :2] = 255  # a hole: all-zero in the one-hot map, which this D calls fake
    batch = {
        "image": tf.constant(rng.normal(size=(2, 8, 8, 3)), tf.float32),
        "label": tf.constant(labels),
        "d_label": tf.constant(labels[::-1].copy()),
        "unlabeled_image": tf.constant(rng.normal(size=(2, 8, 8, 3)), tf.float32),
    }
    generator = lambda images, training=False: images  # 3 soft class scores per pixel  # noqa: E731
    shares = what_d_sees.verdicts(generator, one_hot_detector, [batch, batch], num_classes=3)
    assert shares["ground truth (one-hot)"] == (1.0, 2 * 2 * 6 * 8)  # the hole's 2 rows left out
    assert shares["G's arg-max as one-hot, labeled images"] == (1.0, 2 * 2 * 6 * 8)
    assert shares["G's arg-max as one-hot, unlabeled images"] == (1.0, 2 * 2 * 8 * 8)
    assert shares["G's softmax, labeled images"][0] == 0.0 and shares["G's softmax, unlabeled images"][0] == 0.0
    far = shares[f"ground truth, more than {what_d_sees.NEAR_HOLE_PX} px from a hole"]
    assert far == (0.0, 0)  # on 8x8 maps every pixel is near the hole


def test_the_argmax_table_shows_the_imagenet_baselines_with_their_own_commands(tmp_path, monkeypatch):
    import dataclasses

    lender, borrower = tmp_path / "imagenet", tmp_path / "argmax"
    monkeypatch.setitem(profiles.PROFILES, "imagenet", dataclasses.replace(profiles.PROFILES["imagenet"], results_dir=lender))
    monkeypatch.setitem(
        profiles.PROFILES, "imagenet-argmax", dataclasses.replace(profiles.PROFILES["imagenet-argmax"], results_dir=borrower)
    )
    lent = {("baseline-all", 0): 0.50, ("baseline-1of32", 0): 0.40, ("baseline-1of32", 1): 0.42}
    lent |= {("semi-1of32", 0): 0.38, ("semi-1of32", 1): 0.41, ("semi-1of32", 2): 0.30, ("adversarial-1of32", 0): 0.43}
    own = {("semi-1of32", 0): 0.44, ("semi-1of32", 1): 0.46, ("adversarial-1of32", 0): 0.45, ("adversarial-1of32", 3): 0.6}
    for folder, profile, scores in ((lender, "imagenet", lent), (borrower, "imagenet-argmax", own)):
        for (setting, seed), score in scores.items():
            record = {**fake_record(setting, seed, 600, score), "profile": profile}
            result_files.write_json_atomically(result_files.result_path(folder, setting, seed, 600), record)

    results = result_files.load_results(borrower, 600)
    assert {name: [r["mean_iou"] for r in runs] for name, runs in results.items()} == {
        "baseline-1of32": [0.40, 0.42], "adversarial-1of32": [0.45, 0.6], "semi-1of32": [0.44, 0.46],
        "baseline-all": [0.50],
    }  # the lender's semi runs stay in its own table  # fmt: skip
    text = camvid_tables.table(results, 600, borrower)
    assert "D on G's argmax" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("| baseline | 1/32 |"))
    assert "--profile imagenet --only baseline-1of32" in row and "argmax" not in row
    semi_row = next(line for line in text.splitlines() if line.startswith("| + adversarial + semi | 1/32 |"))
    assert "--profile imagenet-argmax" in semi_row
    assert "| 1/32 | + adversarial + semi vs baseline | +4.0 |" in text and "| 44% |" in text  # 4 of 9 points
    # Against the lender's runs over the seeds both have: semi seeds 0 and 1 (the lender's seed 2
    # has no partner), gains of 6 and 5 points, t = 5.5 / (0.707 / sqrt 2) = 11.0, under 12.71 for
    # one degree of freedom; adversarial seed 0 alone (this table's seed 3 has no partner).
    lender_rows = text.split("Against `--profile imagenet`")[1].split("\n\n")[1].splitlines()
    assert lender_rows[2:] == [
        "| + adversarial | 1/32 | 45.0 | 43.0 | +2.0 | +2.0 | - | no |",
        "| + adversarial + semi | 1/32 | 45.0 | 39.5 | +5.5 | +6.0, +5.0 | +11.0 | no |",
    ]
    assert "Against" not in camvid_tables.table(result_files.load_results(lender, 600), 600, lender)
