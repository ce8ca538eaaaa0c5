"""A results folder's report: its table, with its plots redrawn beside the folder
(``benchmarks/results/camvid_miou.png`` for ``benchmarks/results/camvid``); and the reports of
every kept table, which run_all prints."""

from __future__ import annotations

from pathlib import Path

from camvid_plots import plot, plot_pseudo_labels
from camvid_profiles import CPU, KEPT_TABLES, portable
from camvid_results import load_results
from camvid_tables import table


def plot_path(results_dir: Path, kind: str = "miou") -> Path:
    """``benchmarks/results/camvid_miou.png`` for ``benchmarks/results/camvid`` (and
    ``camvid_pseudo_labels.png`` for ``kind="pseudo_labels"``)."""
    return results_dir.parent / f"{results_dir.name}_{kind}.png"


def report(results_dir: Path = CPU.results_dir, steps: int = CPU.steps) -> str:
    """The table of the finished runs; writes the plots (and names them) when there are any."""
    results = load_results(results_dir, steps)
    if not results:
        return table(results, steps, results_dir)
    plot(results, steps, plot_path(results_dir))
    plots = [plot_path(results_dir)]
    if plot_pseudo_labels(results, steps, plot_path(results_dir, "pseudo_labels")):
        plots.append(plot_path(results_dir, "pseudo_labels"))
    return f"{table(results, steps, results_dir)}\n\nPlot: {', '.join(portable(str(p)) for p in plots)}"


def kept_reports() -> str:
    """:func:`report` of every kept table that has results (the CPU table's "no results yet"
    when none has)."""
    reports = [report(folder, steps) for folder, steps in KEPT_TABLES if load_results(folder, steps)]
    return "\n\n".join(reports) or report()
