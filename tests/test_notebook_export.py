"""The notebooks are the method's source: the package's generated modules must be exactly their
``#| export`` cells (tools/export_notebooks.py), so the code a reader sees is the code that runs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = (
    "advseg_utils/models/generators.py",
    "advseg_utils/models/discriminators.py",
    "advseg_utils/method/baseline.py",
    "advseg_utils/method/adversarial.py",
    "advseg_utils/method/semi_supervised.py",
)


def export(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "export_notebooks.py"), *args], capture_output=True, text=True
    )


@pytest.fixture
def project(tmp_path):
    """A copy of the notebooks, the package and the exporter."""
    for name in ("notebooks", "advseg_utils", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return tmp_path


def edit_first_export_cell(notebook: Path, old: str, new: str) -> None:
    content = json.loads(notebook.read_text())
    for cell in content["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("#| export") and old in source:
            cell["source"] = source.replace(old, new, 1)
            break
    else:
        raise AssertionError(f"no exported cell of {notebook} holds {old!r}")
    notebook.write_text(json.dumps(content, indent=1))


def test_the_generated_modules_are_the_notebooks_cells():
    result = export(ROOT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    for path in GENERATED:
        text = (ROOT / path).read_text()
        assert text.startswith("# Generated from notebooks/"), path


def test_every_generated_module_names_its_notebook_and_holds_what_the_notebook_shows():
    shown = {}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("#| export "):
                directive, _, body = source.partition("\n")
                module = "advseg_utils/" + directive.split()[-1].replace(".", "/") + ".py"
                shown.setdefault(module, []).append((notebook.stem, body.strip("\n")))
    assert sorted(shown) == sorted(GENERATED)
    for module, cells in shown.items():
        text = (ROOT / module).read_text()
        assert f"notebooks/{cells[0][0]}.ipynb" in text.splitlines()[0]
        for _, body in cells:
            assert body in text


def test_an_edited_notebook_makes_the_check_fail_until_exported(project):
    notebook = project / "notebooks" / "03_semi_supervised.ipynb"
    edit_first_export_cell(notebook, "confident = confidence > t_semi", "confident = confidence >= t_semi")
    stale = export(project, "--check")
    assert stale.returncode == 1
    assert "advseg_utils/method/semi_supervised.py" in stale.stdout
    assert "+    confident = confidence >= t_semi" in stale.stdout  # the diff shows the change
    assert export(project).returncode == 0
    assert "confidence >= t_semi" in (project / "advseg_utils/method/semi_supervised.py").read_text()
    assert export(project, "--check").returncode == 0


def test_a_hand_edit_of_a_generated_module_makes_the_check_fail(project):
    module = project / "advseg_utils" / "method" / "baseline.py"
    module.write_text(module.read_text().replace("masked_mean(per_pixel, counted)", "tf.reduce_mean(per_pixel)"))
    result = export(project, "--check")
    assert result.returncode == 1 and "advseg_utils/method/baseline.py" in result.stdout


def test_an_export_directive_below_the_first_line_is_refused(project):
    notebook = project / "notebooks" / "02_adversarial.ipynb"
    edit_first_export_cell(notebook, "#| export method.adversarial\n", "# a comment first\n#| export method.adversarial\n")
    result = export(project, "--check")
    assert result.returncode != 0 and "must be the cell's first line" in result.stdout + result.stderr
