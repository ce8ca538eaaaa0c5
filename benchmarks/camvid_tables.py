"""The quality tables in markdown: mean IoU per setting with the commands that reproduce it,
the mean per-class IoU, the headroom each method closes with its statistical tests, a variant's
runs against its lender's, and the semi-supervised runs' pseudo-label diagnostics."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from advseg_utils import CAMVID_CLASSES
from camvid_profiles import FRACTIONS, METHOD_LABELS, PROFILES, SCRIPT, SETTINGS, Setting, command
from camvid_results import PSEUDO_LABEL_LOGS, load_results, profile_of, table_profile
from quality_stats import compare, critical_t, summary


def table(results: dict[str, list[dict]], steps: int, results_dir: Path | None = None) -> str:
    """Markdown: mean IoU per setting (mean, std and every seed's value, in %), with the command
    that reproduces each row; the mean per-class IoU; the headroom each method closes at each
    fraction, with which differences exceed the seed spread or pass the paired test
    (:func:`headroom_table`); for a table that borrows its baselines, its runs against the
    lender's (:func:`lender_table`); and the pseudo-label diagnostics of the semi-supervised runs
    (:func:`pseudo_label_table`)."""
    if not results:
        return f"no CamVid results of {steps} steps yet: run python {SCRIPT} --steps {steps}"
    profile = table_profile(results)
    lines = [
        f"Val mean IoU (%), {profile.setup}, {steps} iterations",
        "",
        "| method | labels | runs | mean IoU | std | per seed | min/run | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, records in results.items():
        s = {k: 100 * v for k, v in summary(records).items()}
        seeds = [r["seed"] for r in records]
        per_seed = ", ".join(f"{100 * r['mean_iou']:.1f} ({r['seed']})" for r in records)
        minutes = statistics.fmean(r["wall_time_s"] for r in records) / 60
        row_profile = profile_of(records[0])  # a lent baseline row: its own profile's command
        row_command = command([setting], seeds, steps, row_profile, results_dir if row_profile is profile else None)
        lines.append(
            f"| {METHOD_LABELS[records[0]['method']]} | {records[0]['labels']} | {len(records)} | {s['mean']:.1f} "
            f"| {s['std']:.1f} | {per_seed} | {minutes:.1f} | `{row_command}` |"
        )
    lines += ["", "Per seed: mean IoU (seed).", "", "Mean per-class IoU (%) over the runs of each setting", ""]
    lines.append("| method | labels | " + " | ".join(CAMVID_CLASSES) + " |")
    lines.append("|---|---|" + "---|" * len(CAMVID_CLASSES))
    for records in results.values():
        cells = []
        for name in CAMVID_CLASSES:
            values = [r["per_class_iou"][name] for r in records if r["per_class_iou"][name] is not None]
            cells.append(f"{100 * statistics.fmean(values):.1f}" if values else "-")
        lines.append(f"| {METHOD_LABELS[records[0]['method']]} | {records[0]['labels']} | " + " | ".join(cells) + " |")
    for section in (headroom_table(results), lender_table(results, steps), pseudo_label_table(results)):
        if section:
            lines += ["", section]
    first = next(iter(results.values()))[0]
    lines += ["", f"Runs on {first['machine']}; a command skips the runs whose result file exists."]
    return "\n".join(lines)


def _setting_of(method: str, fraction: float) -> str | None:
    return next((name for name, row in SETTINGS.items() if row == Setting(method, fraction)), None)


def headroom_table(results: dict[str, list[dict]]) -> str:
    """Markdown: at each fraction, each method's gain over the baseline (and the semi loss's own
    gain over + adversarial), every seed's gain, the share of the headroom closed,
    (method - baseline) / (all-labels baseline - baseline), whether the gain exceeds the seed
    spread and the paired t test of the seeds' gains (:func:`~quality_stats.compare`). Empty
    without the all-labels baseline."""
    if "baseline-all" not in results:
        return ""
    full = summary(results["baseline-all"])["mean"]
    lines = [
        "Headroom closed: (method - baseline) / (all-labels baseline - baseline), from the means over seeds "
        f"(all-labels baseline {100 * full:.1f}; the paper's VOC 1/8: (69.5 - 66.0) / (73.6 - 66.0) = 46%). "
        "Gains in points; per seed in the order of the seeds; beyond the spread: every seed's gain has the "
        "same sign and the gain exceeds both settings' std over seeds; paired t: the seeds' mean gain over "
        "its standard error (same split, so what a split does to both settings cancels), beyond it at 95 % "
        f"when |t| exceeds Student's two-sided critical value ({critical_t(2):.2f} for 3 seeds).",
        "",
        "| labels | comparison | gain | per seed | headroom | closed | beyond the seed spread | paired t | paired, 95 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    comparisons = (("adversarial", "baseline"), ("semi", "baseline"), ("semi", "adversarial"))
    for fraction, label in FRACTIONS.items():
        baseline = results.get(_setting_of("baseline", fraction))
        if baseline is None:
            continue
        headroom = full - summary(baseline)["mean"]
        for method, reference in comparisons:
            runs, reference_runs = results.get(_setting_of(method, fraction)), results.get(_setting_of(reference, fraction))
            if runs is None or reference_runs is None:
                continue
            c = compare(runs, reference_runs)
            closed = f"{100 * c['gain'] / headroom:.0f}%" if reference == "baseline" and headroom > 0 else "-"
            lines.append(
                f"| {label} | {METHOD_LABELS[method]} vs {METHOD_LABELS[reference]} | {100 * c['gain']:+.1f} "
                f"| {_gains_text(c['seed_gains'])} | {100 * headroom:.1f} | {closed} "
                f"| {'yes' if c['beyond_spread'] else 'no'} | {_t_text(c['paired_t'])} "
                f"| {'yes' if c['paired_beyond'] else 'no'} |"
            )
    return "\n".join(lines) if len(lines) > 4 else ""


def lender_table(results: dict[str, list[dict]], steps: int) -> str:
    """Markdown, for a table that borrows its baselines (``baselines_from``): each of its own
    settings against the same setting in the lender's table, over the seeds both have, seed by
    seed (same split), with the paired test (:func:`~quality_stats.compare`): what the variant
    changes. Empty for other tables."""
    profile = table_profile(results)
    if not profile.baselines_from:
        return ""
    lender = PROFILES[profile.baselines_from]
    theirs = load_results(lender.results_dir, steps)
    lines = [
        f"Against `--profile {lender.name}`: each setting beside the lender's runs of the same setting, "
        "over the seeds both have (so the same splits); gains in points, per seed in the order of the seeds.",
        "",
        f"| method | labels | {profile.name} | {lender.name} | gain | per seed | paired t | paired, 95 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, runs in results.items():
        if profile_of(runs[0]) is not profile:  # a lent baseline
            continue
        shared = {r["seed"] for r in runs} & {r["seed"] for r in theirs.get(setting, [])}
        if not shared:
            continue
        mine, lenders = ([r for r in records if r["seed"] in shared] for records in (runs, theirs[setting]))
        c = compare(mine, lenders)
        lines.append(
            f"| {METHOD_LABELS[SETTINGS[setting].method]} | {SETTINGS[setting].labels} "
            f"| {100 * summary(mine)['mean']:.1f} | {100 * summary(lenders)['mean']:.1f} "
            f"| {100 * c['gain']:+.1f} | {_gains_text(c['seed_gains'])} "
            f"| {_t_text(c['paired_t'])} | {'yes' if c['paired_beyond'] else 'no'} |"
        )
    return "\n".join(lines) if len(lines) > 4 else ""


def _gains_text(gains: list[float]) -> str:
    """Every seed's gain, in points, for the tables."""
    return ", ".join(f"{100 * g:+.1f}" for g in gains)


def _t_text(t: float | None) -> str:
    """A t statistic for the table: one decimal, "-" without one (or an undefined one), beyond
    +-100 as ">100"."""
    if t is None or math.isnan(t):
        return "-"
    return f"{t:+.1f}" if abs(t) < 100 else f"{'>' if t > 0 else '<-'}100"


def pseudo_label_table(results: dict[str, list[dict]]) -> str:
    """Markdown: for the semi-supervised runs that logged them, the kept share and the accuracy
    of G's arg-max on the unlabeled images over all pixels and over the kept pixels, at the end
    of the run (the last logged chunk), mean over seeds. Empty when no run logged them."""
    lines = [
        "What the semi-supervised loss learns from (last logged chunk, mean over seeds, %): the share of "
        "unlabeled pixels D's confidence keeps (> T_semi) and the accuracy of G's arg-max on the unlabeled "
        "images over all pixels and over the kept ones; kept > all means D's confidence picks the better "
        "pseudo-labels.",
        "",
        "| labels | runs | kept share | accuracy, all pixels | accuracy, kept pixels | kept - all |",
        "|---|---|---|---|---|---|",
    ]
    for setting, records in results.items():
        logged = [r["final_logs"] for r in records if "pseudo_acc_kept" in r.get("final_logs", {})]
        if SETTINGS[setting].method != "semi" or not logged:
            continue
        share, over_all, over_kept = (100 * statistics.fmean(logs[name] for logs in logged) for name in PSEUDO_LABEL_LOGS)
        lines.append(
            f"| {SETTINGS[setting].labels} | {len(logged)} | {share:.1f} | {over_all:.1f} | {over_kept:.1f} | {over_kept - over_all:+.1f} |"
        )
    return "\n".join(lines) if len(lines) > 4 else ""
