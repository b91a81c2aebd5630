"""The results file: ``benchmarks/results/<date>.md`` beside its JSON and its plot."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.compare import chance_next_median_within
from benchmarks.early_stop import render as render_rungs
from benchmarks.hypervolume import share_to_reach
from benchmarks.rules import rules_section
from search.measure.intervals import show_delta


def results_stem(folder: Path, quick: bool, today: date | None = None) -> Path:
    """``<folder>/<date>[-quick]``, with ``-2``, ``-3``... when that day already has one."""
    base = (today or date.today()).isoformat() + ("-quick" if quick else "")
    stem, n = folder / base, 1
    while stem.with_suffix(".json").exists():
        n += 1
        stem = folder / f"{base}-{n}"
    return stem


def write_results(results: dict[str, Any], stem: Path, command: str) -> list[Path]:
    """The JSON (everything), the hypervolume plot and the Markdown summary."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    results = {"command": command, **results}
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2, default=str))
    plot = stem.parent / f"{stem.name}-hypervolume.png"
    plot_hypervolume(results["efficiency"], plot)
    markdown = stem.with_suffix(".md")
    markdown.write_text(render_markdown(results, plot.name))
    return [markdown, json_path, plot]


def _fixed(plan: dict[str, Any]) -> str:
    """The searches' lever settings when the run was given any (``--fix``)."""
    fixed = plan.get("fixed") or []
    if not fixed:
        return ""
    settings = ", ".join(f"`{name}={json.dumps(value)}`" for name, value in fixed)
    return f" The searches ran with {settings}."


def render_markdown(results: dict[str, Any], plot_name: str) -> str:
    plan, hw = results["plan"], results["hardware"]
    lines = [
        f"# Benchmark results{' (quick: checks the machinery, not for quoting)' if plan['quick'] else ''}",
        "",
        f"`{results['command']}` at commit {results.get('commit', 'unknown')}",
        "",
        f"Machine: {hw.get('cpu_model')} ({_cpu_kind(hw)}{hw.get('cpu_count')} cores), ONNX Runtime {hw.get('onnxruntime')}, "
        f"torch {hw.get('torch')}; device {plan['device']}, runtime {plan['runtime']}, "
        f"{plan['threads']} thread(s), batch 1. Baseline p50 {results['baseline_p50_ms']:.4f} ms. "
        f"Run time {results['durations_s']['total'] / 60:.1f} min.{_fixed(plan)}",
        "",
        "## Compression against the fp32 baseline",
        "",
        "Measured side by side: test-split accuracy of the deployed file in its runtime; p50 "
        f"over {plan['rounds']} rounds, each in a fresh process {_round_protocol(plan)} "
        f"({_round_times(results)}); ×faster taken within each round (median, and min–max "
        "over rounds, which so covers process-to-process variation and the run's drift). "
        "Test images the model gets wrong that the baseline gets right (lost) and the "
        "reverse (gained), with the 95% interval of the accuracy delta by the paired "
        "bootstrap over test images: with 360 images one image is 0.28 points.",
        "",
        "| model | test accuracy (Δ points) | images lost / gained (95% interval of Δ) | p50 ms | ×faster (min–max) | size KB | ×smaller | ×fewer MACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["models"]:
        faster, low, high = row["faster"]
        fewer = f"{row['fewer_macs']:.2f}" if row["fewer_macs"] else "–"
        lines.append(
            f"| {row['name']} ({row['scheme']}) | {row['test_accuracy']:.4f} "
            f"({row['accuracy_delta_points']:+.2f}) | {_paired(row)} | {row['p50_ms']:.4f} | "
            f"{faster:.2f} ({low:.2f}–{high:.2f}) | {row['size_bytes'] / 1e3:.1f} | "
            f"{row['smaller']:.2f} | {fewer} |"
        )
    lines += _searches(results)
    lines += [
        "",
        '"Best" is the feasible trial (under the budget, within one point of the baseline '
        "on validation) with the largest ×faster × ×smaller, chosen before the test split is "
        "looked at; each feasible trial's test accuracy is listed under its search, with the "
        "search's own ×faster and ×smaller; (pick) marks this rule's choice and (promote) "
        "the trial `search promote` takes by default (the most accurate on validation, ties "
        "to the faster), which a user deploying by hand would get; where both accuracy rules' "
        "choices were kept, each mark names its rule.",
        "",
    ]
    if "early_stop" in plan:  # runs from before 2026-12-04 searched without the rule
        searches = {b: s["seeds"] for b, s in results["compression"].items()}
        lines += render_rungs(searches, plan["early_stop"])
    lines += [
        *rules_section(results),
        "## Search efficiency",
        "",
    ]
    eff = results["efficiency"]
    lines += [
        f"Budget {eff['budget_ms']:.4f} ms; {plan['arm_seconds']:g} s of wall time per run; "
        f"seeds {', '.join(str(s) for s in plan['seeds'])}. Hypervolume of the feasible front "
        "in (accuracy, p50, size), normalised to the box from the ideal (accuracy 1, 0 ms, "
        "0 bytes) to the reference point (accuracy floor, latency budget, baseline size).",
        "",
        "| arm | median hypervolume | min–max | trials per run | feasible per run |",
        "|---|---|---|---|---|",
    ]
    for arm, s in eff["summary"].items():
        trials = ", ".join(str(r["trials"]) for r in s["runs"])
        feasible = ", ".join(str(r["feasible"]) for r in s["runs"])
        lines.append(
            f"| {arm} | {s['final_median']:.4f} | {s['final_min']:.4f}–{s['final_max']:.4f} | "
            f"{trials} | {feasible} |"
        )
    arms = list(eff["summary"])
    if len(arms) > 1:
        ours, other = eff["summary"][arms[0]], eff["summary"][arms[1]]
        ratio = (
            f"{ours['final_median'] / other['final_median']:.2f}×"
            if other["final_median"] > 0
            else "∞ (the second reached none)"
        )
        lines += ["", f"Median hypervolume, {arms[0]} against {arms[1]}: {ratio}."]
        median, per_seed = share_to_reach(
            eff["curves"][arms[0]], eff["curves"][arms[1]], eff["times_s"]
        )
        lines.append(
            f"The same front sooner: {arms[0]}'s median hypervolume reaches {arms[1]}'s final "
            f"median at {_share(median)} of the wall time; seed by seed, each run reaches the "
            f"same seed's final at {', '.join(_share(s) for s in per_seed)}."
        )
    lines += ["", f"![hypervolume against wall time]({plot_name})", ""]
    ov = results["overhead"]
    lines += [
        "## Overhead",
        "",
        f"Over {ov['trials']} completed trials: {100 * ov['trial_share']:.1f}% of trial wall "
        f"time and {100 * ov['run_share']:.1f}% of run wall time (gaps between trials "
        "included) is spent outside fine-tuning, evaluation and latency measurement.",
        "",
        "| phase | seconds | share of trial time |",
        "|---|---|---|",
    ]
    for name, seconds in sorted(ov["phases"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds:.1f} | {100 * seconds / ov['trial_seconds']:.1f}% |")
    if ov.get("by_kind"):  # results before run 30 do not have it
        lines += [
            "",
            "By what became of the trial:",
            "",
            "| trial | trials | seconds each | outside the work | share of the overhead |",
            "|---|---|---|---|---|",
        ]
        spent = ov["trial_seconds"] - ov["work_seconds"]
        for kind, k in sorted(ov["by_kind"].items(), key=lambda kv: -kv[1]["trials"]):
            outside = k["trial_seconds"] - k["work_seconds"]
            lines.append(
                f"| {kind} | {k['trials']} | {k['trial_seconds'] / k['trials']:.2f} | "
                f"{100 * k['share']:.1f}% | {100 * outside / spent if spent else 0:.0f}% |"
            )
    peaks = results["peaks"]
    lines += [
        "",
        "## Against the limit",
        "",
        f"Measured peaks: {peaks['fp32_gmacs']:.1f} G fp32 MAC/s, {peaks['int8_gmacs']:.1f} G "
        f"int8 MAC/s, {peaks['bandwidth_gbs']:.1f} GB/s ({peaks['how']}).",
        "",
        "| model | arithmetic (peak used) | MACs | bytes | compute floor ms | memory floor ms "
        "| measured ms | × above floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["roofline"]:
        lines.append(
            f"| {r['name']} | {r['rate']} | {r['macs'] / 1e6:.2f} M | {r['bytes'] / 1e3:.0f} KB | "
            f"{r['compute_ms']:.4f} | {r['memory_ms']:.4f} | {r['measured_ms']:.4f} | "
            f"{r['above_floor']:.1f} |"
        )
    lines += ["", f"Work folder (Optuna and MLflow stores): `{results['work_folder']}`", ""]
    return "\n".join(lines)


def _searches(results: dict[str, Any]) -> list[str]:
    """Each budget's searches: the best model over the seeds, then each search's trials."""
    seeds = ", ".join(str(s) for s in results["plan"].get("search_seeds", [0]))
    timed = (
        "each candidate timed in turn with the baseline's file, scaled to the baseline's p50 above"
        if results["plan"].get("anchored")
        else "each candidate timed alone"
    )
    lines = [
        "",
        f"Searches (TPE with references and latency first; {timed}), one per seed "
        f"({seeds}) and budget; the best model of each is in the table above. Over the "
        "seeds, median (min–max) of each best model's figures:",
        "",
        "| budget | searches with a feasible model | ×faster | ×smaller | test Δ points |",
        "|---|---|---|---|---|",
    ]
    epochs = results["plan"].get("finetune_epochs", 0)
    for share, budget in results["compression"].items():
        summaries = [(f"{share} ({budget['budget_ms']:.4f} ms)", budget.get("summary", {}))]
        if "summary_finetuned" in budget:
            summaries.append((f"{share}, fine-tuned {epochs} epochs", budget["summary_finetuned"]))
        for label, summary in summaries:
            cells = [
                _spread(summary[key], signed=key == "test_delta_points") if key in summary else "–"
                for key in ("faster", "smaller", "test_delta_points")
            ]
            lines.append(
                f"| {label} | {summary.get('found', 0)} of "
                f"{summary.get('seeds', len(budget['seeds']))} | " + " | ".join(cells) + " |"
            )
    if any("summary_finetuned" in b for b in results["compression"].values()):
        lines += [
            "",
            f"Fine-tuned rows: each search's pick rebuilt by `search finetune` with {epochs} "
            "epochs of recovery instead of the search's 10: the same layers and number format, "
            "trained longer. The search's short fine-tune is a proxy that ranks candidates; "
            "these rows measure whether the longer one pays. Both are timed side by side "
            "with the rest.",
        ]
    lines += ["", *_range_caveat(results["compression"]), ""]
    base_test = results["models"][0]["test_accuracy"]
    for share, budget in results["compression"].items():
        for entry in budget["seeds"]:
            lines += _search_lines(share, budget["budget_ms"], entry, base_test)
    return lines


def _range_caveat(compression: dict[str, Any]) -> list[str]:
    """How far each budget's min–max over its picks predicts the next run's median."""
    chances = []
    for share, budget in compression.items():
        found = budget.get("summary", {}).get("found", 0)
        if found >= 2:
            chances.append(f"{share}: {found} picks, {chance_next_median_within(found):.0%}")
        elif found == 1:
            chances.append(f"{share}: 1 pick, no range")
    if not chances:
        return []
    return [
        "Even when two runs draw from one and the same search, the next run's median lies "
        "inside this run's min–max over n picks only so often (exact, by exchangeability, "
        "for untied figures; ties, as when two seeds pick one model, make it rarer; 3 "
        f"picks: 60%, 5: 83%, 7: 93%; here {'; '.join(chances)}): read the range as a "
        "sample of what the search finds, not as an interval the next run lands in. "
        "Whether two runs' searches differ is `python -m benchmarks compare`'s rank-sum "
        "test over the seeds."
    ]


def _trial_marked(number: int, entry: dict[str, Any]) -> str:
    """A candidate's trial number, marked when a rule chose it: under each accuracy rule
    where the results kept both (older results carry the pick and promote's alone)."""
    picks = entry.get("picks")
    if picks:
        marks = [
            f"{rule} {mark}"
            for rule, chosen in picks.items()
            for mark, key in (("pick", "trial"), ("promote", "promote_trial"))
            if chosen.get(key) == number
        ]
        return f"{number} ({', '.join(marks)})" if marks else str(number)
    marks = [
        mark
        for mark, key in (("pick", "trial"), ("promote", "promote_trial"))
        if entry.get(key) == number
    ]
    return f"{number} ({', '.join(marks)})" if marks else str(number)


def _search_lines(
    share: str, budget_ms: float, entry: dict[str, Any], base_test: float
) -> list[str]:
    """One search: counts, its pick, its feasible trials on test, or its nearest misses."""
    found = (
        f"best feasible: trial {entry['trial']} `{_params(entry['params'])}`"
        if "trial" in entry
        else "no feasible trial"
    )
    lines = [
        f"- {share} ({budget_ms:.4f} ms), seed {entry['seed']}: {entry['trials']} trials, "
        f"{entry['feasible']} feasible; {found}"
    ]
    candidates = entry.get("candidates", [])
    if candidates:
        lines += [
            "",
            "  | trial | validation (Δ points, 95% paired) | test (Δ points, 95% paired) "
            "| ×faster | ×smaller |",
            "  |---|---|---|---|---|",
        ]
        for c in candidates:
            validation = show_delta(
                c["delta_points"],
                c.get("delta_ci_low_points"),
                c.get("delta_ci_high_points"),
                decimals=2,
            )
            test_delta = c.get("test_delta_points", 100 * (c["test_accuracy"] - base_test))
            test_ci = c.get("test_delta_ci_points") or [None, None]
            lines.append(
                f"  | {_trial_marked(c['trial'], entry)} | {c['accuracy']:.4f} "
                f"({validation}) | {c['test_accuracy']:.4f} "
                f"({show_delta(test_delta, *test_ci, decimals=2)}) | {c['faster']:.2f} | "
                f"{c['smaller']:.2f} |"
            )
        lines.append("")
    for what, n in entry.get("nearest", {}).items():
        if n.get("accuracy_kind") == "before fine-tuning":
            lines.append(
                f"  - {what}: trial {n['trial']}, stopped before fine-tuning (over the "
                f"budget) at {n['p50_ms']:.4f} ms, {n['faster']:.2f}× faster, "
                f"{n['smaller']:.2f}× smaller"
            )
            continue
        lines.append(
            f"  - {what}: trial {n['trial']}, {n['accuracy']:.4f} ({n['delta_points']:+.2f} "
            f"points) at {n['p50_ms']:.4f} ms, {n['faster']:.2f}× faster, "
            f"{n['smaller']:.2f}× smaller"
        )
    return lines


def _spread(figures: list[float], *, signed: bool = False) -> str:
    """``median (min–max)``."""
    form = "{:+.2f}" if signed else "{:.2f}"
    median, low, high = (form.format(x) for x in figures)
    return f"{median} ({low} to {high})" if signed else f"{median} ({low}–{high})"


def plot_hypervolume(efficiency: dict[str, Any], path: Path) -> None:
    """Median hypervolume against wall time per arm, with the min–max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(7, 4))
    times = np.array(efficiency["times_s"])
    for arm, runs in efficiency["curves"].items():
        values = np.array(runs)
        axes.plot(times, np.median(values, axis=0), label=arm)
        axes.fill_between(times, values.min(axis=0), values.max(axis=0), alpha=0.2)
    axes.set_xlabel("wall time (s)")
    axes.set_ylabel("hypervolume of the feasible front")
    axes.set_title(f"budget {efficiency['budget_ms']:.3f} ms")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _share(share: float | None) -> str:
    return "never" if share is None else f"{share:.2f}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _paired(row: dict[str, Any]) -> str:
    """Examples lost and gained against the baseline, and the delta's interval in points;
    a dash for results files from before they were recorded."""
    if row.get("test_lost") is None or row.get("delta_interval_points") is None:
        return "–"
    low, high = row["delta_interval_points"]
    return f"{row['test_lost']} / {row['test_gained']} ({low:+.2f} to {high:+.2f})"


def _round_protocol(plan: dict[str, Any]) -> str:
    """How a round timed the models: in turns, from 2026-11-25 on."""
    if plan.get("interleaved"):
        return "timing the models in turn, 20 ms of back-to-back calls each"
    return "timing every model once"


def _round_times(results: dict[str, Any]) -> str:
    """When the rounds ran, in minutes into the run: the spread covers that span."""
    times = [r["at_s"] / 60 for r in results.get("rounds", [])]
    if not times:
        return "interleaved"
    return "at " + ", ".join(f"{t:.0f}" for t in times) + " min into the run"


def _cpu_kind(hardware: dict[str, Any]) -> str:
    """The CPU's generation and vector extensions, where the run recorded them."""
    known = [hardware[k] for k in ("cpu_id", "cpu_features") if k in hardware]
    return "".join(f"{value}; " for value in known)
