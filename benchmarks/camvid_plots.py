"""The quality tables' plots: mean IoU against the labeled fraction per method, and the
semi-supervised runs' pseudo-label accuracy over training; each written atomically."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from advseg_utils.atomic import atomic_path
from camvid_profiles import FRACTIONS, METHOD_LABELS, SETTINGS
from camvid_results import PSEUDO_LABEL_LOGS, profile_of, table_profile
from quality_stats import summary

#: What the pseudo-label plot's legend calls each log.
PSEUDO_LABEL_NAMES = dict(zip(PSEUDO_LABEL_LOGS, ("kept share", "accuracy, all pixels", "accuracy, kept pixels")))


def _save(fig: Figure, path: Path) -> None:
    """Writes ``fig`` to ``path`` atomically."""
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=120, format=path.suffix[1:])


def plot(results: dict[str, list[dict]], steps: int, path: Path) -> None:
    """Mean IoU against the labeled fraction (every fraction of the results on the x axis), one
    line per method, error bars the std over seeds; written atomically to ``path``. The methods'
    points at one fraction are drawn slightly apart, so that their error bars do not hide one
    another."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    axis = fig.add_subplot()
    for position, (method, label) in enumerate(METHOD_LABELS.items()):
        spread = 2 ** (0.04 * (position - 1))  # on the log axis: a fixed small step per method
        rows = sorted(
            (SETTINGS[setting].labeled_fraction, summary(records))
            for setting, records in results.items()
            if SETTINGS[setting].method == method
        )
        if rows:
            fractions, stats = zip(*rows)
            means, stds = [100 * s["mean"] for s in stats], [100 * s["std"] for s in stats]
            axis.errorbar([f * spread for f in fractions], means, yerr=stds, marker="o", capsize=4, label=label)
    axis.set_xscale("log", base=2)
    shown = sorted({SETTINGS[setting].labeled_fraction for setting in results})
    axis.set_xticks(shown, [FRACTIONS[f] for f in shown])
    axis.xaxis.set_minor_locator(NullLocator())
    first = next(iter(results.values()))[0]
    images = first.get("labeled_images", 0) + first.get("unlabeled_images", 0)
    axis.set_xlabel("labeled share of CamVid train" + (f" ({images} images)" if images else ""))
    axis.set_ylabel("val mean IoU (%), mean and std over seeds")
    title = f"{table_profile(results).setup}, {steps} iterations"
    axis.set_title(textwrap.fill(title, 70), fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    _save(fig, path)


def plot_pseudo_labels(results: dict[str, list[dict]], steps: int, path: Path) -> bool:
    """The semi-supervised runs' pseudo-label accuracy over all unlabeled pixels (dashed) and over
    the pixels D keeps (solid), and the kept share (dotted), against the iteration, one colour per
    fraction, mean over seeds; written to ``path``. False (and nothing written) when no run
    logged them."""
    curves = {}
    for setting, records in results.items():
        logged = [r for r in records if "pseudo_acc_kept" in r.get("history", {})]
        if SETTINGS[setting].method == "semi" and logged:
            curves[SETTINGS[setting].labels] = logged
    if not curves:
        return False
    fig = Figure(figsize=(6, 4), layout="constrained")
    axis = fig.add_subplot()
    for colour, (label, records) in enumerate(curves.items()):
        every = records[0]["config"]["checkpoint_every"]
        length = min(len(r["history"]["pseudo_acc_kept"]) for r in records)
        iterations = [min((i + 1) * every, steps) for i in range(length)]
        for name, style in zip(PSEUDO_LABEL_LOGS, (":", "--", "-")):
            mean = [100 * statistics.fmean(r["history"][name][i] for r in records) for i in range(length)]
            axis.plot(iterations, mean, style, color=f"C{colour}", label=f"{label}: {PSEUDO_LABEL_NAMES[name]}")
    semi_start = next(iter(curves.values()))[0]["config"]["semi_start"]
    axis.axvline(semi_start, color="grey", linewidth=0.8)
    axis.set_xlabel(f"iteration (grey: semi_start = {semi_start})")
    axis.set_ylabel("% of unlabeled pixels, mean over seeds")
    title = f"Pseudo-labels on CamVid's unlabeled images, {profile_of(next(iter(curves.values()))[0]).setup}"
    axis.set_title(textwrap.fill(title, 70), fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    _save(fig, path)
    return True
