"""Statistics of the quality tables: a setting's spread over seeds and one setting against
another, seed by seed (the seeds share their split), with a paired t test (scipy.stats)."""

from __future__ import annotations

import statistics
import warnings

from scipy import stats

#: The paired test's level: two-sided, 95 %.
CONFIDENCE = 0.95


def summary(records: list[dict]) -> dict[str, float]:
    """Mean, standard deviation (0 for one run), min and max of the runs' mean IoU."""
    scores = [r["mean_iou"] for r in records]
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "min": min(scores),
        "max": max(scores),
    }


def critical_t(degrees: int) -> float:
    """Student's two-sided critical value at :data:`CONFIDENCE` for ``degrees`` degrees of freedom."""
    return float(stats.t.ppf((1 + CONFIDENCE) / 2, degrees))


def compare(method: list[dict], reference: list[dict]) -> dict:
    """``method``'s runs against ``reference``'s, seed by seed (the seeds share their split):
    the gain of the means, every seed's gain, whether the gain exceeds the seed spread (every
    seed's gain has the gain's sign and the gain is larger than both settings' std), and the
    paired t statistic of the seeds' gains with whether it passes a two-sided 95 % test. The
    paired test removes what the split does to both settings alike, which the spread keeps.
    Gains without spread give t = +-inf (nan when they are all 0: no test)."""
    by_seed = {r["seed"]: r["mean_iou"] for r in reference}
    gains = [r["mean_iou"] - by_seed[r["seed"]] for r in method if r["seed"] in by_seed]
    gain = summary(method)["mean"] - summary(reference)["mean"]
    spread = max(summary(method)["std"], summary(reference)["std"])
    same_sign = bool(gains) and all(g * gain > 0 for g in gains)
    paired_t, paired_beyond = None, False
    if len(gains) > 1:
        with warnings.catch_warnings():  # equal gains: scipy warns of precision loss, t is +-inf or huge either way
            warnings.simplefilter("ignore", RuntimeWarning)
            paired_t = float(stats.ttest_1samp(gains, 0.0).statistic)
        paired_beyond = abs(paired_t) > critical_t(len(gains) - 1)
    return {
        "gain": gain,
        "seed_gains": gains,
        "beyond_spread": same_sign and abs(gain) > spread and len(gains) > 1,
        "paired_t": paired_t,
        "paired_beyond": paired_beyond,
    }
