"""The package works from a wheel: built from the package's files alone, installed outside the
source tree, and run from another folder, it finds its sample data and writes splits and runs
under the working folder, never into its own installed folder."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN = """
import json, sys
from pathlib import Path
import advseg_utils
from advseg_utils import ExperimentConfig, run_experiment, sample_dataset

config = ExperimentConfig(name="from_wheel", method="semi", labeled_fraction=0.5).smoke()
result = run_experiment(config)
print(json.dumps({
    "package": advseg_utils.__file__,
    "train_images": len(sample_dataset("train")),
    "split": str(config.split_path.resolve()),
    "run": str(config.run_dir.resolve()),
    "iteration": result["iteration"],
    "labeled_images": result["labeled_images"],
}))
"""


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_an_installed_wheel_runs_the_smoke_configuration_from_another_folder(tmp_path):
    # Build from a copy holding only what the wheel is made of, so nothing else in the clone helps.
    source = tmp_path / "source"
    shutil.copytree(REPO / "advseg_utils", source / "advseg_utils", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("advseg_utils-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    installed = site / "advseg_utils"
    before = _snapshot(installed)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    for flag in ("ADVSEG_SMOKE", "ADVSEG_DEMO"):
        env.pop(flag, None)
    done = subprocess.run([sys.executable, "-c", RUN], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).resolve().is_relative_to(installed.resolve())
    assert report["train_images"] == 24
    assert (report["iteration"], report["labeled_images"]) == (8, 12)
    assert report["split"] == str((work / "data" / "splits" / "sample_labeled0.5_seed0.txt").resolve())
    assert Path(report["split"]).is_file()
    assert report["run"] == str((work / "checkpoints" / "from_wheel").resolve())
    assert list(Path(report["run"]).glob("*.index")), "no checkpoint in the run folder"
    assert _snapshot(installed) == before, "the run wrote into the installed package"


def test_project_dir_is_the_working_folder_or_the_clone_it_lies_in(tmp_path, monkeypatch):
    from advseg_utils import project_dir

    monkeypatch.chdir(tmp_path)
    assert project_dir() == tmp_path.resolve()
    clone = tmp_path / "clone"
    (clone / "advseg_utils").mkdir(parents=True)
    (clone / "advseg_utils" / "__init__.py").write_text("")
    (clone / "pyproject.toml").write_text("")
    (clone / "notebooks").mkdir()
    monkeypatch.chdir(clone / "notebooks")  # where a notebook's kernel starts
    assert project_dir() == clone.resolve()
