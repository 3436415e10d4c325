"""The statistics every stage reports, in one place: means and rates with 95% intervals, and trends.

Normal approximations throughout (`Z95` = 1.96): the samples here (held-out prompts, comparison pairs, PPO updates)
number in the tens to hundreds, where they are close enough to say whether an interval excludes 0 or 0.5.
"""

import math
from collections.abc import Sequence

Z95 = 1.96


def mean_ci(values: Sequence[float]) -> dict:
    """Mean and the half-width of its normal-approximation 95% confidence interval (sample standard deviation)."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "ci95": float("nan"), "n": 1}
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "ci95": Z95 * math.sqrt(variance / n), "n": n}


def linear_trend(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Least-squares slope of `ys` against `xs` and the half-width of its 95% interval (normal approximation).

    A training curve "rises" when the interval lies above 0; the first and last quarter means alone cannot tell a
    trend from which prompts happened to be drawn at either end.
    """
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"linear_trend needs paired values; got {n} and {len(ys)}.")
    if n < 3:
        return {"slope": float("nan"), "ci95": float("nan"), "n": n}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return {"slope": float("nan"), "ci95": float("nan"), "n": n}
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True)) / (n - 2)
    return {"slope": slope, "ci95": Z95 * math.sqrt(residual / sxx), "n": n}


def win_rate(scores: Sequence[float], baseline: Sequence[float], tie_tolerance: float = 1e-9) -> dict:
    """How often `scores[i]` beats `baseline[i]` (same prompt): win 1, tie 1/2, loss 0, averaged, with a 95% CI."""
    if len(scores) != len(baseline):
        raise ValueError(f"win_rate needs paired scores; got {len(scores)} and {len(baseline)}.")
    outcomes = []
    for a, b in zip(scores, baseline, strict=True):
        outcomes.append(0.5 if abs(a - b) <= tie_tolerance else float(a > b))
    summary = mean_ci(outcomes)
    return {
        "rate": summary["mean"],
        "ci95": summary["ci95"],
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
    }


def proportion_ci(successes: int, total: int) -> float:
    """Half-width of the 95% interval of a proportion `successes / total` (NaN when `total` is 0)."""
    if not total:
        return float("nan")
    rate = successes / total
    return Z95 * math.sqrt(rate * (1 - rate) / total)
