"""Writes the notebooks' exported cells into the helper package, or checks that they are there.

    python tools/export_notebooks.py          # rewrite the generated modules
    python tools/export_notebooks.py --check  # exit 1, with a diff, if one is out of date

A code cell whose first line is ``#| export <module>`` (e.g. ``#| export method.baseline``) is
also the source of ``advseg_utils/<module>.py``: the module is the header below followed by
those cells, in notebook order, unchanged but for the directive line. The notebooks show the
method as code that runs, and the tests and benchmarks import that same code from the package;
the test suite runs ``--check``, so the two cannot drift apart (nbdev's ``#| export`` and d2l's
``#@save`` work the same way; this is their core in one small file, with no dependency).
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_baseline", "02_adversarial", "03_semi_supervised")
DIRECTIVE = re.compile(r"#\| export ([a-z_][a-z0-9_.]*)\s*$")
HEADER = "# Generated from notebooks/{notebook}.ipynb by tools/export_notebooks.py: edit the notebook, not this file.\n"


def generated_modules(root: Path = ROOT) -> dict[Path, str]:
    """{module path: its text} for every module that an exported cell names."""
    cells: dict[str, list[str]] = {}
    source_of: dict[str, str] = {}
    for notebook in NOTEBOOKS:
        path = root / "notebooks" / f"{notebook}.ipynb"
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            source = "".join(cell["source"])
            first, _, body = source.partition("\n")
            match = DIRECTIVE.match(first) if cell["cell_type"] == "code" else None
            if match is None:
                if cell["cell_type"] == "code" and "#| export" in source:
                    raise SystemExit(f"{path}, cell {index}: '#| export <module>' must be the cell's first line")
                continue
            module = match.group(1)
            if source_of.setdefault(module, notebook) != notebook:
                raise SystemExit(f"{module} is exported from both {source_of[module]} and {notebook}")
            cells.setdefault(module, []).append(body.strip("\n"))
    return {
        root / "advseg_utils" / (module.replace(".", "/") + ".py"): HEADER.format(notebook=source_of[module])
        + "\n\n\n".join(bodies)
        + "\n"
        for module, bodies in cells.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a module is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_modules().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        stale.append(path)
        if args.check:
            diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), "from the notebook")
            sys.stdout.writelines(diff)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"out of date with the notebooks: {names}; run python tools/export_notebooks.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
