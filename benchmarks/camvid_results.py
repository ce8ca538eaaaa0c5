"""The quality tables' result files: one JSON record per (setting, seed, length), where it
lives, how it is written (atomically) and how a table's records are read back (with the
baselines a table borrows from another profile)."""

from __future__ import annotations

import json
from pathlib import Path

from advseg_utils.atomic import write_text_atomically

from camvid_profiles import PROFILES, SETTINGS, Profile

#: The pseudo-label logs of a semi-supervised run (SemiSupervised's): the share of unlabeled pixels
#: D's confidence keeps, and the accuracy of G's arg-max over all of them and over the kept ones.
PSEUDO_LABEL_LOGS = ("semi_ratio", "pseudo_acc_all", "pseudo_acc_kept")


def result_path(results_dir: Path, setting: str, seed: int, steps: int) -> Path:
    return results_dir / f"{setting}-seed{seed}-{steps}steps.json"


def write_json_atomically(path: Path, record: dict) -> None:
    """Writes ``record`` to ``path`` atomically."""
    write_text_atomically(path, json.dumps(record, indent=1))


def load_results(results_dir: Path, steps: int) -> dict[str, list[dict]]:
    """{setting: its runs' records, by seed} for the runs of ``steps`` iterations, with the
    baselines of the profile its runs name as ``baselines_from``."""
    found: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("steps") == steps and record.get("setting") in SETTINGS:
            found.setdefault(record["setting"], []).append(record)
    lender = found and profile_of(next(iter(found.values()))[0]).baselines_from
    if lender:
        lent = load_results(PROFILES[lender].results_dir, steps)
        found.update({name: runs for name, runs in lent.items() if SETTINGS[name].method == "baseline"})
    return {setting: sorted(found[setting], key=lambda r: r["seed"]) for setting in SETTINGS if setting in found}


def profile_of(record: dict) -> Profile:
    """The profile a result was trained with (results from before profiles existed: the CPU's)."""
    return PROFILES[record.get("profile", "cpu")]


def table_profile(results: dict[str, list[dict]]) -> Profile:
    """The profile of a table's own runs (not that of the baselines it borrows)."""
    profiles = [profile_of(r) for runs in results.values() for r in runs]
    return next((p for p in profiles if p.baselines_from), profiles[0])
