"""`report.md` with PNG plots: PPO training curves, labeler score per policy, alignment tax per policy.

The figures are drawn from files the stages already wrote: each PPO run's `log_history.json` and the evaluation's
metrics. When the policies include `ppo` and `ppo_ptx` (the default pipeline) the report also checks the three
goals of the default run: reward-model accuracy, PPO-ptx's win rate against SFT, and PPO-ptx's alignment tax
relative to plain PPO's (for `ppo_ptx_r2` too, the second round of `make pipeline ROUNDS=2`).
"""

import json
import math
import statistics
from pathlib import Path
from types import ModuleType

CURVES = (
    ("objective/scores", "RM score"),
    ("gold/labeler_score", "labeler score (gold)"),
    ("objective/kl", "KL to SFT"),
    ("ptx/lm_loss", "ptx LM loss"),
)
GOALS = {"rm_accuracy": 0.75, "flip_probe": 0.70, "ppo_ptx_win_rate": 0.60, "tax_ratio": 0.5}
# The PPO-ptx policies the goals are checked for: the default pipeline's, and the iterated one's second round.
PTX_POLICIES = (("ppo_ptx", "PPO-ptx"), ("ppo_ptx_r2", "PPO-ptx (round 2)"))


def read_run_files(runs: list[str], filename: str) -> dict[str, object]:
    """`["ppo=dir", ...]` -> each run's parsed `filename` (JSON) by name; runs without the file are skipped."""
    found = {}
    for entry in runs:
        name, _, path = entry.partition("=")
        file = Path(path).expanduser() / filename
        if file.is_file():
            found[name] = json.loads(file.read_text())
    return found


def load_ppo_logs(runs: list[str]) -> dict[str, list[dict]]:
    """`["ppo=dir", ...]` -> per-update log entries of each run's `log_history.json` (missing files are skipped)."""
    return {
        name: [e for e in history if "objective/scores" in e]
        for name, history in read_run_files(runs, "log_history.json").items()
    }


def _fmt(stat: dict | float | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    if isinstance(stat, dict):
        mean = stat.get("mean", stat.get("rate"))
        ci = stat.get("ci95")
        if ci is None or math.isnan(ci):
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {ci:.{digits}f}"
    return f"{stat:.{digits}f}"


def markdown_table(results: dict[str, dict], reference: str | None) -> str:
    """One row per policy; ± is the 95% confidence half-width."""
    ref = reference or "reference"
    header = [
        "policy",
        "labeler score",
        f"win vs {ref} (labeler)",
        f"win vs {ref} (RM)",
        "RM score",
        f"KL to {ref}",
        "held-out ppl",
        "ppl increase",
        "words",
        "distinct-2",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        row = [
            name,
            _fmt(r.get("labeler_score")),
            _fmt(r.get("win_rate_labeler")),
            _fmt(r.get("win_rate_rm")),
            _fmt(r.get("rm_score")),
            _fmt(r.get("kl_to_reference"), 2),
            _fmt(r.get("heldout_perplexity"), 2),
            _fmt(r.get("perplexity_increase"), 2),
            _fmt(r.get("response_words", {}).get("mean"), 1),
            _fmt(r.get("distinct_2")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def pyplot() -> ModuleType:
    """matplotlib's pyplot, imported on first use (files only, no display), so that formatting needs no plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# `ppo_summary.json`'s held-out checks: summary key -> which responses it scored (`recipes/ppo.py` writes them).
HELDOUT_SUMMARIES = {"heldout_rm_score": "greedy", "heldout_rm_score_sampled": "sampled"}


def describe_heldout(change: dict, responses: str = "greedy") -> str:
    """One line for a PPO run's `heldout_rm_score` (or, `responses="sampled"`, `heldout_rm_score_sampled`)."""
    line = (
        f"{change['reference']['mean']:.3f} (SFT) -> {change['policy']['mean']:.3f} (trained), change "
        f"{change['change']['mean']:+.3f} ± {change['change']['ci95']:.3f}, win rate {change['win_rate']['rate']:.3f} "
        f"± {change['win_rate']['ci95']:.3f} over {change['prompts']} prompts ({responses} responses)"
    )
    tokens = change.get("response_tokens")  # absent in summaries written before it was measured
    if tokens:
        line += f"; response length {tokens['reference']:.1f} (SFT) -> {tokens['policy']:.1f} (trained) tokens"
    return line


def describe_length_correction(fit: dict) -> str:
    """One line for a PPO run's `length_correction` fit (`ppo_summary.json`, written with `length_correction: sft`);
    fits written before their interval was measured, or without one, read without it."""
    interval = f" ± {fit['ci95']:.4f}" if fit.get("ci95") is not None else ""
    return (
        f"length correction {fit['slope']:+.4f}{interval} reward per token within a prompt, fitted on "
        f"{fit['samples']} SFT samples ({fit['finished']} finished, mean {fit['reference_tokens']:.1f} tokens) and "
        "taken out of every finished rollout's score"
    )


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_ppo_curves(logs: dict[str, list[dict]], path: Path, window: int = 4) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        for name, entries in logs.items():
            points = [(e.get("episode", i), e[key]) for i, e in enumerate(entries) if key in e]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            line = ax.plot(x, y, alpha=0.3)[0]
            ax.plot(x, smooth(list(y), window), color=line.get_color(), label=name)
        ax.set_title(title)
        ax.set_xlabel("episodes")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"PPO training curves (faint: per update; solid: moving average of {window})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gold_proxy_curves(logs: dict[str, list[dict]], per_bin: int = 4) -> dict[str, dict[str, list[float]]]:
    """Each run's proxy (RM) and gold (labeler) score against sqrt(KL to SFT), as Gao et al. (2022) plot them.

    Per run, for `name` in `proxy` / `gold` (`objective/scores` / `gold/labeler_score`): `name` and `sqrt_kl_name`, one
    point per update: the score standardized over every run's updates (one mean and standard deviation per score, so
    runs stay comparable and both scores share an axis) and sqrt of that update's KL (clipped at 0); and
    `binned_name` / `binned_sqrt_kl_name`, the means of `per_bin` updates at a time taken in order of KL, so the curve
    reads along the KL axis (KL does not grow monotonically from update to update). A run without gold scores (no
    labeler) has no `gold` curve.
    """
    if per_bin < 1:
        raise ValueError(f"per_bin must be >= 1, not {per_bin}")
    keys = {"proxy": "objective/scores", "gold": "gold/labeler_score"}
    scale = {}
    for name, key in keys.items():
        values = [e[key] for entries in logs.values() for e in entries if key in e and math.isfinite(e[key])]
        if len(values) >= 2:
            scale[name] = (statistics.fmean(values), statistics.stdev(values) or 1.0)
    curves = {}
    for run, entries in logs.items():
        run_curves = {}
        for name in scale:
            key = keys[name]
            points = [(e["objective/kl"], e[key]) for e in entries if key in e and "objective/kl" in e]
            points = [(math.sqrt(max(kl, 0.0)), v) for kl, v in points if math.isfinite(v) and math.isfinite(kl)]
            if not points:
                continue
            mean, std = scale[name]
            run_curves[f"sqrt_kl_{name}"] = [x for x, _ in points]
            run_curves[name] = [(v - mean) / std for _, v in points]
            by_kl = sorted(zip(run_curves[f"sqrt_kl_{name}"], run_curves[name], strict=True))
            bins = [by_kl[i : i + per_bin] for i in range(0, len(by_kl), per_bin)]
            run_curves[f"binned_sqrt_kl_{name}"] = [statistics.fmean(x for x, _ in b) for b in bins]
            run_curves[f"binned_{name}"] = [statistics.fmean(y for _, y in b) for b in bins]
        if run_curves:
            curves[run] = run_curves
    return curves


def plot_gold_vs_proxy(logs: dict[str, list[dict]], path: Path, per_bin: int = 4) -> Path | None:
    """Proxy and gold score (standardized) against sqrt(KL), one panel per PPO run; `None` if nothing to plot."""
    plt = pyplot()
    curves = gold_proxy_curves(logs, per_bin)
    if not curves:
        return None
    # At least two panels wide, so that the title fits when there is one PPO run.
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * max(len(curves), 2), 3.6), squeeze=False)
    for ax, (run, c) in zip(axes[0], curves.items(), strict=True):
        for name, label, color in (
            ("proxy", "proxy (RM score)", "tab:orange"),
            ("gold", "gold (labeler score)", "tab:blue"),
        ):
            if name not in c:
                continue
            ax.scatter(c[f"sqrt_kl_{name}"], c[name], s=8, alpha=0.3, color=color)
            ax.plot(c[f"binned_sqrt_kl_{name}"], c[f"binned_{name}"], marker="o", ms=3, label=label, color=color)
        ax.set_title(run)
        ax.set_xlabel("sqrt(KL to SFT)")
        ax.set_ylabel("standardized score")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Gold vs proxy reward during PPO (dots: updates; lines: means of {per_bin} updates by KL)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_policy_bars(policies: dict[str, dict], key: str, ylabel: str, path: Path) -> Path:
    """One bar per policy of `policies[name][key]` (a `{mean, ci95}` dict or a number), with 95% error bars."""
    plt = pyplot()
    names, means, errors = [], [], []
    for name, result in policies.items():
        value = result.get(key)
        if value is None:
            continue
        mean = value["mean"] if isinstance(value, dict) else value
        ci = value.get("ci95", 0.0) if isinstance(value, dict) else 0.0
        names.append(name)
        means.append(mean)
        errors.append(0.0 if ci is None or math.isnan(ci) else ci)
    fig, ax = plt.subplots(figsize=(1.4 * max(len(names), 2) + 1.5, 3.4))
    ax.bar(names, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def goal_rows(policies: dict[str, dict], rm_results: dict | None) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, met?) for the three goals of the default run, where they can be measured."""
    rows = []
    for goal, key, ci_key, label in (
        ("rm_accuracy", "eval_pairwise_accuracy", "eval_ci95_half_width", "RM held-out pairwise accuracy"),
        (
            "flip_probe",
            "eval_flip_probe_accuracy",
            "eval_flip_probe_ci95_half_width",
            "RM instruction-flip probe accuracy",
        ),
    ):
        if rm_results and key in rm_results:
            accuracy = rm_results[key]
            ci = rm_results.get(ci_key, float("nan"))
            met = "yes" if accuracy >= GOALS[goal] else "no"
            rows.append((label, f">= {GOALS[goal]:.2f}", f"{accuracy:.3f} ± {ci:.3f}", met))
    plain = policies.get("ppo", {})
    for name, label in PTX_POLICIES:
        ptx = policies.get(name, {})
        if "win_rate_labeler" in ptx:
            rate = ptx["win_rate_labeler"]
            low = rate["rate"] - rate["ci95"]
            met = "yes" if rate["rate"] >= GOALS["ppo_ptx_win_rate"] and low > 0.5 else "no"
            rows.append(
                (
                    f"{label} win rate vs SFT (labeler)",
                    f">= {GOALS['ppo_ptx_win_rate']:.2f}, 95% low end > 0.50",
                    f"{rate['rate']:.3f} ± {rate['ci95']:.3f}",
                    met,
                )
            )
        if "perplexity_increase" in ptx and "perplexity_increase" in plain:
            tax_ptx, tax_ppo = ptx["perplexity_increase"], plain["perplexity_increase"]
            # With no tax from plain PPO there is nothing to halve; PPO-ptx meets the goal only by not raising it.
            met = "yes" if tax_ptx <= GOALS["tax_ratio"] * max(tax_ppo, 0.0) else "no"
            rows.append(
                (
                    f"{label} perplexity increase <= half of PPO's",
                    f"<= {GOALS['tax_ratio']:.1f} x {tax_ppo:+.3f}",
                    f"{tax_ptx:+.3f}",
                    met,
                )
            )
    return rows


def length_preference_line(rm_results: dict | None) -> str | None:
    """A sentence comparing how often the reward model and its held-out labels prefer the shorter response
    (`instructrl.reward.length_preference`, read by the RM stage); `None` where the RM stage did not measure it."""
    if not rm_results or "eval_rm_prefers_shorter" not in rm_results:
        return None
    model, labels = rm_results["eval_rm_prefers_shorter"], rm_results["eval_labels_prefer_shorter"]
    pairs = int(rm_results.get("eval_length_pairs", 0))
    gap = model - labels
    if abs(gap) <= 0.05:
        tail = ", close to its labels: no length shortcut to speak of."
    else:
        direction = "shorter" if gap > 0 else "longer"
        tail = (
            f": it prefers the {direction} answer {abs(gap):.2f} more often than its labels do, a length shortcut "
            "PPO tends to follow (compare the policies' words above)."
        )
    line = (
        f"Length preference: on the {pairs} held-out pairs whose responses differ in length, the reward model prefers "
        f"the shorter response in {model:.2f} of them and its labels in {labels:.2f}{tail}"
    )
    if rm_results.get("eval_finished_length_pairs"):  # rankings that record which responses ended
        line += (
            f" Among the {int(rm_results['eval_finished_pairs'])} held-out pairs of two finished responses (none cut "
            f"off at the sampling limit; PPO's reward orders such pairs), it orders "
            f"{rm_results['eval_finished_pairwise_accuracy']:.3f} right and prefers the shorter in "
            f"{rm_results['eval_finished_rm_prefers_shorter']:.2f} where its labels do in "
            f"{rm_results['eval_finished_labels_prefer_shorter']:.2f}."
        )
    return line


def instruction_rows(policies: dict[str, dict]) -> list[list[str]]:
    """Rows `[kind, prompts, win rate of each policy]` of the labeler win rates by kind of instruction."""
    compared = [name for name, r in policies.items() if "win_rate_labeler_by_instruction" in r]
    if not compared:
        return []
    kinds = list(dict.fromkeys(k for name in compared for k in policies[name]["win_rate_labeler_by_instruction"]))
    rows = [["instruction", "prompts", *compared]]
    for kind in kinds:
        cells = [policies[name]["win_rate_labeler_by_instruction"].get(kind) for name in compared]
        prompts = next(c["prompts"] for c in cells if c)
        rows.append([kind, str(prompts), *(f"{c['rate']:.2f} ± {c['ci95']:.2f}" if c else "" for c in cells)])
    return rows


def criteria_rows(policies: dict[str, dict], reference: str | None) -> list[list[str]]:
    """Rows `[criterion, prompts, reference's mean, change of each policy]` of the labeler's criteria.

    The change is the paired mean difference against the reference's response to the same prompt, with its 95%
    half-width (`labeler_criteria_change`, `instructrl.evaluation.criterion_changes`).
    """
    compared = [name for name, r in policies.items() if "labeler_criteria_change" in r]
    if not compared or reference not in policies:
        return []
    means = policies[reference].get("labeler_criteria", {})
    names = list(dict.fromkeys(k for name in compared for k in policies[name]["labeler_criteria_change"]))
    rows = [["criterion", "prompts", f"{reference} mean", *(f"{name} change" for name in compared)]]
    for criterion in names:
        cells = [policies[name]["labeler_criteria_change"].get(criterion) for name in compared]
        prompts = next(c["n"] for c in cells if c)
        mean = means.get(criterion)
        rows.append(
            [
                criterion,
                str(prompts),
                f"{mean['mean']:.3f}" if mean else "",
                *(f"{c['mean']:+.3f} ± {c['ci95']:.3f}" if c else "" for c in cells),
            ]
        )
    return rows


def _table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]


def decided_by_rows(shares: dict[str, float], accuracy: dict[str, dict]) -> list[list[str]]:
    """Rows of the report's table of deciding criteria: each criterion's share of the collected pairs and the RM's
    held-out accuracy (± 95%) on the pairs it decides; criteria in the collection's order, then the held-out ones."""
    rows = [["criterion", "share of pairs", "held-out pairs", "RM accuracy on them"]]
    for name in [*shares, *(n for n in accuracy if n not in shares)]:
        share = f"{shares[name]:.3f}" if name in shares else ""
        held = accuracy.get(name)
        pairs = str(held["pairs"]) if held else ""
        right = f"{held['pairwise_accuracy']:.3f} ± {held['ci95_half_width']:.3f}" if held else ""
        rows.append([name, share, pairs, right])
    return rows


def write_report(
    output_dir: Path,
    metrics: dict,
    ppo_runs: list[str],
    rm_results_path: Path | None,
    comparisons_summary: Path | None = None,
    rm_by_criterion: Path | None = None,
) -> Path:
    """Draw the plots next to `report.md` and write it; returns the report's path. `rm_by_criterion` is the RM
    stage's held-out accuracy by deciding labeler criterion (`instructrl.reward.BY_CRITERION_FILE`), if written."""
    output_dir = Path(output_dir)
    policies = metrics["policies"]
    logs = load_ppo_logs(ppo_runs)
    lines = ["# instructrl evaluation report", ""]
    samples = metrics.get("samples_per_prompt", 1)
    sampled = (
        "one sampled response per prompt and policy"
        if samples == 1
        else f"{samples} sampled responses per prompt and policy (a win rate compares each with each of the "
        "reference's to the same prompt)"
    )
    lines += [
        f"{metrics['num_prompts']} held-out prompts, {sampled}; ± is a 95% confidence half-width with the prompt as "
        "the unit. Win rates count ties as one half.",
        "",
        markdown_table(policies, metrics.get("reference")),
    ]
    rm_results = None
    if rm_results_path is not None and Path(rm_results_path).is_file():
        rm_results = json.loads(Path(rm_results_path).read_text())
    goals = goal_rows(policies, rm_results)
    if goals:
        lines += ["## Goals of the default run", "", *_table([["goal", "target", "measured", "met"], *goals]), ""]
    length_line = length_preference_line(rm_results)
    if length_line:
        lines += [length_line, ""]
    by_instruction = instruction_rows(policies)
    if by_instruction:
        lines += [
            "## Labeler win rate against the reference by kind of instruction",
            "",
            "A prompt with two explicit constraints counts under both; `none` states no constraint.",
            "",
            *_table(by_instruction),
            "",
        ]
    by_criterion = criteria_rows(policies, metrics.get("reference"))
    if by_criterion:
        lines += [
            "## Labeler criteria against the reference",
            "",
            "Each criterion's score (0 to 1) on the prompts it applies to: the reference's mean, and each policy's "
            "mean change against the reference's answer to the same prompt (± 95%): where a policy gains or loses "
            "the labeler's score.",
            "",
            *_table(by_criterion),
            "",
        ]
    shares, accuracy = {}, {}
    if comparisons_summary is not None and Path(comparisons_summary).is_file():
        shares = json.loads(Path(comparisons_summary).read_text()).get("pairs_decided_by") or {}
    if rm_by_criterion is not None and Path(rm_by_criterion).is_file():
        accuracy = json.loads(Path(rm_by_criterion).read_text())
    if shares or accuracy:
        lines += [
            "## What decided the reward model's comparisons",
            "",
            "Share of the collected comparison pairs (sibling re-rankings aside) whose labeler order each criterion "
            "decided (the criterion contributing most to the winner's score), and the reward model's accuracy on "
            "the held-out pairs each criterion decides: which parts of the instructions it learned to judge.",
            "",
            *_table(decided_by_rows(shares, accuracy)),
            "",
        ]
    if logs:
        plot_ppo_curves(logs, output_dir / "ppo_curves.png")
        lines += ["## PPO training", "", "![PPO training curves](ppo_curves.png)", ""]
        if plot_gold_vs_proxy(logs, output_dir / "gold_vs_proxy.png"):
            lines += [
                "Proxy (reward-model) and gold (labeler) score of the rollouts against sqrt(KL to SFT), as Gao et al. "
                "(2022) plot them: where the proxy keeps rising and the gold score stops, PPO is over-optimizing the "
                "reward model.",
                "",
                "![Gold vs proxy](gold_vs_proxy.png)",
                "",
            ]
    summaries = read_run_files(ppo_runs, "ppo_summary.json")
    heldout = [
        (name, responses, summary[key])
        for name, summary in summaries.items()
        for key, responses in HELDOUT_SUMMARIES.items()
        if key in summary
    ]
    if heldout:
        lines += [
            "Reward-model score of responses to the same held-out prompts, SFT policy against the trained one (the "
            "training curve mixes in how hard each update's prompts were; sampled with `heldout_samples`):",
            "",
        ]
        lines += [f"- {name}: {describe_heldout(change, responses)}" for name, responses, change in heldout] + [""]
    corrected = [
        (name, summary["length_correction"]) for name, summary in summaries.items() if "length_correction" in summary
    ]
    if corrected:
        lines += [f"- {name}: {describe_length_correction(fit)}" for name, fit in corrected] + [""]
    plot_policy_bars(policies, "labeler_score", "simulated labeler score", output_dir / "labeler_score.png")
    lines += ["## Labeler score per policy", "", "![Labeler score per policy](labeler_score.png)", ""]
    if any("heldout_perplexity" in r for r in policies.values()):
        plot_policy_bars(policies, "heldout_perplexity", "held-out pretraining perplexity", output_dir / "tax.png")
        lines += [
            "## Alignment tax",
            "",
            "Perplexity on held-out pretraining text: the increase over SFT is the tax RLHF pays.",
            "",
            "![Held-out perplexity per policy](tax.png)",
            "",
        ]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
