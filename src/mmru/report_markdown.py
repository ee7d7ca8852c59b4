"""The Table-1 report as Markdown, every row with the recipe that produced it.

A row is at the paper's recipe only when it was trained on the full dataset for the paper's
100 epochs and certified on 1000 test points with a 120 s MIP limit (Sec. 5 of the paper);
anything less is labelled *shortened*, with what was cut; so is a fine-tune (``init_from``), which
names the file it started from and its md5.
"""

from __future__ import annotations

from pathlib import Path

#: the paper's evaluation setting (Sec. 5): epochs, test points, MIP seconds per point
PAPER_EPOCHS, PAPER_POINTS, PAPER_MIP_SECONDS = 100, 1000, 120.0

#: datasets that are a subset of one of the paper's
SUBSETS = {"mnist5k": "5000-image MNIST subset"}


def recipe_of(summary: dict) -> dict:
    """What produced one summary: data, start (init_from), epochs, seed, points, MIP limit, hardware, times,
    commit."""
    run, recipe = summary.get("run", {}), summary.get("recipe", {})
    return {
        "init_from": run.get("init_from"),
        "data": SUBSETS.get(run.get("dataset"), "full" if run.get("dataset") else "?"),
        "epochs": recipe.get("epochs"),
        "seed": run.get("seed"),
        "points": summary.get("n_points"),
        "mip_seconds": recipe.get("mip_time_limit") if recipe.get("mip", True) else 0.0,
        "attack": recipe.get("attack"),
        "mip_scope": recipe.get("mip_scope", "all"),
        "hardware": recipe.get("hardware"),
        "train_minutes": _minutes(recipe.get("train_seconds")),
        "certify_minutes": _minutes(recipe.get("certify_seconds")),
        "commit": recipe.get("commit"),
        "source": recipe.get("source") or run.get("source"),
        # cuts no setting records, written into summary.json's recipe by whoever made them (e.g. an exact
        # pass stopped before it reached every undecided point)
        "cuts": list(recipe.get("cuts", [])),
    }


def shortened(recipe: dict) -> list[str]:
    """How a run falls short of the paper's recipe (empty: it is the paper's)."""
    cuts = []
    if recipe["data"] != "full":
        cuts.append(f"data: {recipe['data']}")
    if recipe.get("init_from"):
        cuts.append(f"fine-tuned from {Path(recipe['init_from']['path']).name} for {recipe['epochs'] or '?'} epochs")
    elif recipe["epochs"] is None or recipe["epochs"] < PAPER_EPOCHS:
        cuts.append(f"{recipe['epochs'] or '?'} of {PAPER_EPOCHS} epochs")
    if recipe["points"] is None or recipe["points"] < PAPER_POINTS:
        cuts.append(f"{recipe['points'] or '?'} of {PAPER_POINTS} points")
    if recipe["mip_seconds"] is None or recipe["mip_seconds"] < PAPER_MIP_SECONDS:
        cuts.append(f"MIP {recipe['mip_seconds'] if recipe['mip_seconds'] is not None else '?'} s of "
                    f"{PAPER_MIP_SECONDS:g} s")
    if recipe.get("mip_scope") == "union":
        cuts.append("exact stage only on the points attacked in no norm: per-norm UBs looser, union exact")
    return cuts + recipe.get("cuts", [])


def describe(recipe: dict) -> str:
    cuts = shortened(recipe)
    status = "paper's recipe" if not cuts else "SHORTENED (" + "; ".join(cuts) + ")"
    parts = [f"{recipe['data']} data", f"{recipe['epochs']} epochs", f"seed {recipe['seed']}",
             f"{recipe['points']} points", f"MIP {recipe['mip_seconds']} s/point", f"attack {recipe['attack']}",
             f"{recipe['hardware']}", f"train {recipe['train_minutes']} min", f"certify {recipe['certify_minutes']} min",
             f"commit {recipe['commit']}"]
    if recipe.get("source"):  # trained elsewhere: the certification is ours, the training the source's
        parts = [f"published network ({recipe['source']})", *parts[:2], *parts[3:7], *parts[8:]]
    start = recipe.get("init_from")
    if start:  # a fine-tune: the file it started from
        parts.insert(0, f"fine-tuned from {Path(start['path']).name} (md5 {start['md5']})")
    return f"{status}: " + ", ".join(parts)


def write_markdown(records: list[dict[str, str]], columns: list[str], headers: dict[str, str], path: Path) -> None:
    """``table1.md``: one table per dataset, cells ``ours (paper)``, then each row's recipe."""
    lines = ["# Table 1, measured", "", "Robust test error in % on the first test points: ours (paper). "
             "LB from attacks, UB from certificates; worst UB = max over norms (the paper's figure); "
             "union UB = points not certified in every norm at once (no paper figure).", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == dataset]
        lines += [f"## {dataset}", "", "| model | " + " | ".join(headers[c] for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for r in mine:
            cells = [f"{r[c] or '–'} ({r[c + '_paper']})" if r[c + "_paper"] else r[c] or "–" for c in columns]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
        lines += ["", "Recipes:", ""]
        lines += [f"- **{r['model']}**: {r['recipe']}" + (f" — notes: {r['notes']}" if r["notes"] else "")
                  for r in mine]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f}"
