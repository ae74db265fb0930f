"""Experiment reports: the markdown table in the shape of V-PETL Table 3 and the Fig. 1 plot (top-1 against
trainable parameters, log x), from the rows of ``results.csv``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.stats import Interval, mean_interval, verdict

CSV_FIELDS = [
    "task",
    "row",
    "label",
    "method",
    "group",
    "d",
    "positions",
    "scale",
    "seed",
    "trainable_params",
    "top1",
    "top5",
    "val_loss",
    "train_loss",
    "epochs",
    "train_time_s",
    "run_time_s",
    "val_clips",
]


def format_params(n: float) -> str:
    """Table 3 style: 6.38M, 0.18M; small counts in K (the demo backbone is 3M parameters)."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(row key, task) -> {label, method, group, d, params, mean, spread, n, seed0}; top-1 in %. The spread is
    the half-width of the 95% Student-t interval of the mean over seeds, 0 for one seed."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r["row"]), str(r["task"])), []).append(r)
    out = {}
    for key, rs in groups.items():
        accs = [100.0 * float(r["top1"]) for r in rs]
        out[key] = {
            "label": rs[0]["label"],
            "method": rs[0]["method"],
            "group": rs[0]["group"],
            "d": rs[0]["d"],
            "params": int(rs[0]["trainable_params"]),
            "mean": sum(accs) / len(accs),
            "spread": mean_interval(accs).half if len(accs) > 1 else 0.0,
            "n": len(accs),
            "seed0": accs[0],
        }
    return out


def paired(records: Iterable[Mapping[str, Any]], a: str, b: str, task: str) -> Interval | None:
    """Top-1 of row ``a`` minus row ``b`` on ``task`` (points), paired by seed (same data, same seed), with the
    95% Student-t interval over seeds, never narrower than ± one validation clip (``val_clips``, where the records
    have it); None when no seed has both."""
    by_seed: dict[str, dict[int, float]] = {a: {}, b: {}}
    clips: set[int] = set()
    for r in records:
        if str(r["task"]) == task and str(r["row"]) in by_seed:
            by_seed[str(r["row"])][int(r["seed"])] = 100.0 * float(r["top1"])
            if r.get("val_clips") not in (None, ""):
                clips.add(int(float(r["val_clips"])))
    seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
    step = 100.0 / min(clips) if clips else 0.0  # top-1 points per validation clip
    return mean_interval([by_seed[a][s] - by_seed[b][s] for s in seeds], resolution=step) if seeds else None


def claim_rows(records: list[Mapping[str, Any]], claims: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """One line per (claim, task): the paired difference, its interval and the verdict."""
    tasks = set(_ordered(records, "task"))
    out = []
    for label, a, b, claim_tasks in claims:
        for task in claim_tasks:
            if task not in tasks:
                continue
            diff = paired(records, a, b, task)
            if diff is not None:
                out.append({"claim": label, "a": a, "b": b, "task": task, "diff": diff, "verdict": verdict(diff)})
    return out


def _ordered(records: list[Mapping[str, Any]], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(str(r[key]), None)
    return list(seen)


def _cell(stats: Mapping[str, Any] | None, best: float, with_spread: bool) -> str:
    if stats is None:
        return "–"
    text = f"{stats['mean']:.2f}" + (f" ± {stats['spread']:.2f}" if with_spread and stats["n"] > 1 else "")
    return f"**{text}**" if abs(stats["mean"] - best) < 1e-9 else text


def write_markdown(
    records: list[Mapping[str, Any]],
    path: Path,
    *,
    preset: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write the Table-3-shaped markdown (headline rows, then the PATT position and scale ablations)."""
    stats = aggregate(records)
    tasks, rows = _ordered(records, "task"), _ordered(records, "row")
    seeds = max((s["n"] for s in stats.values()), default=1)
    ablation_seeds = max((s["n"] for s in stats.values() if s["group"] != "headline"), default=1)
    val_clips = {t: next((str(r.get("val_clips") or "?") for r in records if r["task"] == t), "?") for t in tasks}
    lines = ["# PETL methods on the demo backbone (V-PETL Table 3 shape)", ""]
    if preset:
        split = (
            f"{preset.get('clips_per_class')} training clips per class"
            if preset.get("val_clips")
            else f"{preset.get('clips_per_class')} clips per class (80/20 train/val)"
        )
        lines += [
            f"Preset `{preset.get('name')}`: {preset.get('epochs')} epochs, batch {preset.get('batch_size')}, "
            f"{split}; validation clips per task: "
            + ", ".join(f"{t} {n}" for t, n in val_clips.items())
            + ". Top-1 in %, on the validation split; "
            f"mean ± half-width of the 95% Student-t interval over {seeds} seeds (same data, training seed "
            f"varies); ablations: "
            + (f"{ablation_seeds} seeds" if ablation_seeds > 1 else "seed 0")
            + ". Best per column in bold.",
            "",
        ]
    header = "| Method | d | " + " | ".join(f"# Params ({t}) | Top-1 {t} (%)" for t in tasks) + " |"
    rule = "|---|---|" + "---|---|" * len(tasks)
    lines += ["## Methods", "", header, rule]
    headline = [r for r in rows if any(stats[(r, t)]["group"] == "headline" for t in tasks if (r, t) in stats)]
    best = {t: max(stats[(r, t)]["mean"] for r in headline if (r, t) in stats) for t in tasks}
    for r in headline:
        first = next(stats[(r, t)] for t in tasks if (r, t) in stats)
        cells = []
        for t in tasks:
            s = stats.get((r, t))
            cells += [format_params(s["params"]) if s else "–", _cell(s, best[t], True)]
        lines.append(f"| {first['label']} | {first['d'] or '-'} | " + " | ".join(cells) + " |")
    for group, title, column in (("positions", "PATT positions", "Positions"), ("scale", "PATT scale s", "s")):
        ablation = [r for r in rows if any((r, t) in stats and stats[(r, t)]["group"] == group for t in tasks)]
        if not ablation:
            continue
        d = stats[next((r, t) for r in ablation for t in tasks if (r, t) in stats)]["d"]
        reference = f"patt-d{d}"
        many = ablation_seeds > 1
        lines += [
            "",
            f"## {title} (d = {d}, " + (f"{ablation_seeds} seeds)" if many else "seed 0)"),
            "",
            f"| {column} | # Params | " + " | ".join(f"Top-1 {t} (%)" for t in tasks) + " |",
            "|---|---|" + "---|" * len(tasks),
        ]
        for r in ([reference] if any((reference, t) in stats for t in tasks) else []) + ablation:
            rec = next(x for x in records if x["row"] == r)
            name = str(rec["positions"] if group == "positions" else rec["scale"])
            name += " (default)" if r == reference else ""
            accs = [
                (
                    "–"
                    if (r, t) not in stats
                    else _cell(stats[(r, t)], float("inf"), True)
                    if many
                    else f"{stats[(r, t)]['seed0']:.2f}"
                )
                for t in tasks
            ]
            lines.append(f"| {name} | {format_params(int(rec['trainable_params']))} | " + " | ".join(accs) + " |")
    judged = claim_rows(records, (preset or {}).get("claims") or ())
    if judged:
        lines += [
            "",
            "## Claims (paired by seed)",
            "",
            "Difference a − b in top-1 points, mean over the seeds both rows ran, with the 95% Student-t "
            "interval of the paired differences (t over seeds, not a bootstrap over clips), never narrower than ± "
            "one validation clip (seeds that agree to the clip say nothing about the next). "
            "**holds**: the interval is above 0; **reversed**: below 0; otherwise (or with fewer than 3 seeds) "
            "not resolved.",
            "",
            "| Claim | Task | a − b | Difference (points) | 95% interval | Seeds | Verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in judged:
            diff = c["diff"]
            interval = "–" if diff.n < 2 else f"[{diff.low:+.2f}, {diff.high:+.2f}]"
            lines.append(
                f"| {c['claim']} | {c['task']} | {c['a']} − {c['b']} | {diff.mean:+.2f} | {interval} | "
                f"{diff.n} | {c['verdict']} |"
            )
    if summary:
        pre = summary.get("pretrain") or {}
        lines += [
            "",
            "## Run",
            "",
            f"- runs: {summary.get('runs')}, their run times summing to "
            f"{sum(float(r.get('run_time_s') or 0) for r in records):.0f} s; this invocation (which resumes an "
            f"interrupted experiment) took {summary.get('total_time_s')} s, data + backbone "
            f"{summary.get('prep_time_s')} s",
            f"- demo backbone {str(summary.get('backbone_sha256', ''))[:12]}: source val top-1 "
            f"{100 * float(pre.get('val_top1') or 0):.1f}%",
            "- mean run time per method (s): "
            + ", ".join(f"{m} {t}" for m, t in (summary.get("mean_run_time_s") or {}).items()),
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plot(records: list[Mapping[str, Any]], path: Path) -> Path:
    """Fig. 1 style: one panel per task, top-1 (%) against trainable parameters (log x); PATT and BAPAT as lines
    over d, the other methods as single points; error bars show the 95% interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = aggregate(records)
    tasks = _ordered(records, "task")
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    markers = {
        "linear": "s",
        "bitfit": "^",
        "lora": "v",
        "adaptmlp": "D",
        "prefix": "P",
        "full": "*",
        "patt": "o",
        "bapat": "o",
    }
    for ax, task in zip(axes[0], tasks, strict=True):
        points = {k[0]: s for k, s in stats.items() if k[1] == task and s["group"] == "headline"}
        for method in ("patt", "bapat"):
            series = sorted((s for s in points.values() if s["method"] == method), key=lambda s: s["params"])
            if series:
                ax.errorbar(
                    [s["params"] for s in series],
                    [s["mean"] for s in series],
                    yerr=[s["spread"] for s in series],
                    marker="o",
                    capsize=3,
                    label=series[0]["label"],
                )
                for s in series:
                    ax.annotate(
                        f"d={s['d']}",
                        (s["params"], s["mean"]),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                    )
        for s in points.values():
            if s["method"] not in ("patt", "bapat"):
                ax.errorbar(
                    [s["params"]],
                    [s["mean"]],
                    yerr=[s["spread"]],
                    marker=markers.get(s["method"], "x"),
                    markersize=9,
                    capsize=3,
                    linestyle="none",
                    label=s["label"],
                )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{task}: parameter-accuracy trade-off")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
