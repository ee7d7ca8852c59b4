"""Where a certification's results go: summary.json, PNG curves, the console and W&B."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from mmru.figures import plot_robustness_curves, plot_universal_curve

NORM_LABELS = {"l1": "l1", "l2": "l2", "linf": "l∞"}


def table1_row(summary: dict) -> dict[str, float]:
    """The Table-1 figures of one run, in percent, keyed like the paper's columns."""
    row = {"TE": 100 * summary["test_error"]}
    for norm in NORM_LABELS:
        if norm in summary:
            row[f"{norm} LB"] = 100 * summary[norm]["lb"]
            row[f"{norm} UB"] = 100 * summary[norm]["ub"]
    row["worst case UB"] = 100 * summary["worst_case_ub"]
    if "union_ub" in summary:  # summaries written before the union bounds existed lack them
        row["union LB"] = 100 * summary["union_lb"]
        row["union UB"] = 100 * summary["union_ub"]
    return row


def print_row(summary: dict, console: Console | None = None) -> None:
    """A console table laid out like the paper's Table 1, plus the Theorem 4.1 medians."""
    # wide enough for every cell: a pipe or a narrow terminal (80 columns) would cut them to '…'
    console = console or Console(width=max(Console().width, 160))
    run = summary.get("run", {})
    norms = [n for n in NORM_LABELS if n in summary]
    split = summary.get('split', 'test')
    title = f"{run.get('dataset', '?')}: robust {split} error (%) on {summary['n_points']} {split} points"
    table = Table(title=title)
    table.add_column("model")
    table.add_column("TE", justify="right")
    for n in norms:
        table.add_column(f"{NORM_LABELS[n]} LB\nε={summary[n]['eps']:.4g}", justify="right")
        table.add_column(f"{NORM_LABELS[n]} UB", justify="right")
    row = table1_row(summary)
    tail = [k for k in ("worst case UB", "union LB", "union UB") if k in row]
    for key in tail:
        table.add_column(key, justify="right")
    cells = [f"{row['TE']:.2f}"] + [f"{row[f'{n} {b}']:.1f}" for n in norms for b in ("LB", "UB")]
    table.add_row(str(run.get("regularizer", "?")), *cells, *(f"{row[k]:.1f}" for k in tail))
    console.print(table)
    curve = summary.get("universal_curve")
    if curve:
        medians = ", ".join(f"p={p}: {r:.4g}" for p, r in curve["median_radius"].items())
        console.print(f"median certified radius from Theorem 4.1 — {medians}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary.get("timings_seconds", {}).items())
    console.print(f"time per stage: {timings}")


def write_outputs(summary: dict, out_dir: Path, cfg: DictConfig) -> None:
    """summary.json and the curves' PNGs in ``out_dir``; a W&B run when ``cfg.wandb.enabled``."""
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = [plot_robustness_curves(summary["curves"], out_dir / "robustness_curves.png")]
    curve = summary.get("universal_curve")
    if curve:
        errors = {float(p): e for p, e in curve["error"].items()}
        plots.append(plot_universal_curve(curve["eps"], errors, out_dir / "universal_curve.png"))
    if cfg.wandb.enabled:
        _log_wandb(summary, plots, out_dir, cfg)


def _log_wandb(summary: dict, plots: list[Path], out_dir: Path, cfg: DictConfig) -> None:
    """One W&B run per certification, in the training run's project and group."""
    import wandb

    run = summary.get("run", {})
    with wandb.init(
        project=cfg.wandb.project, group=run.get("dataset"), job_type="certify", dir=str(out_dir),
        name=f"certify-{run.get('dataset')}-{run.get('regularizer')}-seed{run.get('seed')}",
        mode="offline" if cfg.wandb.offline else "online", config={"run": run, "eps": {
            n: summary[n]["eps"] for n in NORM_LABELS if n in summary}},
    ) as wb:
        row = table1_row(summary)
        wb.summary.update({f"certify/{k}": v for k, v in row.items()})
        wb.log({
            "certify/table1": wandb.Table(columns=["model", *row], data=[[run.get("regularizer"), *row.values()]]),
            "certify/robustness_curves_data": wandb.Table(columns=["curve", "eps", "certified", "empirical"],
                                                          data=curve_rows(summary["curves"])),
            **{f"certify/{p.stem}": wandb.Image(str(p)) for p in plots},
        })


def curve_rows(curves: dict) -> list[list]:
    """The robustness curves as table rows (curve, eps or the union's t, certified, empirical)."""
    return [[name, e, c, m] for name, curve in curves.items()
            for e, c, m in zip(curve["eps"], curve["certified"], curve["empirical"])]
