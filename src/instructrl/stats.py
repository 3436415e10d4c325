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


def prompt_groups(values: Sequence[float], samples_per_prompt: int = 1) -> list[Sequence[float]]:
    """The values split into prompts, as they are stored: `samples_per_prompt` consecutive values per prompt."""
    if samples_per_prompt < 1 or len(values) % samples_per_prompt:
        raise ValueError(f"{len(values)} values do not split into prompts of {samples_per_prompt} samples.")
    return [values[start : start + samples_per_prompt] for start in range(0, len(values), samples_per_prompt)]


def prompt_means(values: Sequence[float], samples_per_prompt: int = 1) -> list[float]:
    """The mean of each prompt's values (`prompt_groups`)."""
    return [sum(group) / len(group) for group in prompt_groups(values, samples_per_prompt)]


def prompt_mean_ci(values: Sequence[float], samples_per_prompt: int = 1) -> dict:
    """`mean_ci` with the prompt as the unit: the samples of one prompt are not independent of each other, so the
    interval comes from the per-prompt means (`n` counts prompts). With one sample per prompt it is `mean_ci`."""
    return mean_ci(prompt_means(values, samples_per_prompt))


def win_rate(
    scores: Sequence[float], baseline: Sequence[float], tie_tolerance: float = 1e-9, samples_per_prompt: int = 1
) -> dict:
    """How often a response beats the baseline's to the same prompt: win 1, tie 1/2, loss 0, with a 95% CI.

    The values are stored prompt by prompt, `samples_per_prompt` of each side per prompt. A prompt's outcome is the
    mean over all its cross pairs (each of its samples against each of the baseline's), which estimates the
    probability that a sampled response beats a sampled baseline response to that prompt; the rate and its interval
    are over prompts. `wins`, `ties` and `losses` count pairs.
    """
    if len(scores) != len(baseline):
        raise ValueError(f"win_rate needs paired scores; got {len(scores)} and {len(baseline)}.")
    outcomes, counts = [], [0, 0, 0]  # counts: losses, ties, wins
    groups = zip(prompt_groups(scores, samples_per_prompt), prompt_groups(baseline, samples_per_prompt), strict=True)
    for own, ref in groups:
        pairs = [0.5 if abs(a - b) <= tie_tolerance else float(a > b) for a in own for b in ref]
        for outcome in pairs:
            counts[int(2 * outcome)] += 1
        outcomes.append(sum(pairs) / len(pairs))
    summary = mean_ci(outcomes)
    return {
        "rate": summary["mean"],
        "ci95": summary["ci95"],
        "wins": counts[2],
        "ties": counts[1],
        "losses": counts[0],
    }


def proportion_ci(successes: int, total: int) -> float:
    """Half-width of the 95% interval of a proportion `successes / total` (NaN when `total` is 0)."""
    if not total:
        return float("nan")
    rate = successes / total
    return Z95 * math.sqrt(rate * (1 - rate) / total)
