"""Table 1 from many certifications, each figure beside the paper's published one.

    python -m mmru.report logs/table1/multiruns [more dirs, summary.json files or globs]
                          [--out reports/table1] [--wandb [--online]] [--split test] [--keep-latest]

Reads every ``summary.json`` under the given paths (written by certify.py, or by train.py with
``certify_after_training=true``), one row per (dataset, training scheme), seeds averaged, in
the paper's layout: TE, LB / UB per norm, worst-case UB, union UB, all in %. Prints a console
table and writes ``table1.csv`` and ``table1.md`` (each row with its recipe, see
:mod:`mmru.report_markdown`); ``--wandb`` also logs it as a W&B table (offline unless ``--online``).
Partial shards (merge them first with ``python -m mmru.certification.merge``) and other splits
than ``--split`` are skipped, with a note; two runs of one (dataset, scheme, seed) are an error
unless ``--keep-latest`` keeps the newer.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from rich.console import Console
from rich.table import Table

from mmru import zoo
from mmru.paper_table1 import DATASET_NAMES, EPS, NORMS, PAPER_PROXY, SCHEME_LABELS, paper_row
from mmru.report_markdown import describe, recipe_of, write_markdown

#: the figures of a row, in Table 1's column order
#: then the union UB (certified in every norm), a figure the paper does not give
COLUMNS = ("te", *(f"{n}_{b}" for n in NORMS for b in ("lb", "ub")), "worst_ub", "union_ub")
HEADERS = {"te": "TE", "worst_ub": "worst UB", "union_ub": "union UB",
           **{f"{n}_{b}": f"{n.replace('inf', '∞')} {b.upper()}" for n in NORMS for b in ("lb", "ub")}}
#: scheme names that mean the same regularizer config
ALIASES = {"plain": "none"}
#: marks the scheme of a published network (its summary's run has a ``source``): its own row, never
#: averaged with our runs of the scheme, compared with the same paper row
PUBLISHED = "@published"
#: marks the scheme of a fine-tune (its run has ``init_from``), followed by where it started: the
#: starting network's scheme + PUBLISHED for a published network, else the file's name. Its own row;
#: a fine-tune of a published network is compared with that network's paper row
FINE_TUNED = "@from:"


class ReportError(ValueError):
    """The inputs cannot make one table (no runs, duplicates); the message is one sentence."""


@dataclass(frozen=True)
class RunResult:
    """One certified run: where its summary is and what it was."""

    path: Path
    dataset: str
    scheme: str
    seed: int | None
    summary: dict


@dataclass
class Row:
    """One (dataset, scheme) row: our figures (mean over seeds) and the paper's, in %."""

    dataset: str
    scheme: str
    runs: list[RunResult]
    ours: dict[str, float | None] = field(default_factory=dict)
    paper: dict[str, float | None] = field(default_factory=dict)
    paper_dataset: str | None = None
    eps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def base_scheme(self) -> str:
        """The training scheme of the row's own runs."""
        return self.scheme.split(FINE_TUNED)[0].removesuffix(PUBLISHED)

    @property
    def paper_scheme(self) -> str | None:
        """The paper row to compare with: the scheme's own, or for a fine-tune that of the published
        network it started from (None: a fine-tune of anything else has no paper figures)."""
        if FINE_TUNED not in self.scheme:
            return self.base_scheme
        start = self.scheme.split(FINE_TUNED)[1]
        return start.removesuffix(PUBLISHED) if start.endswith(PUBLISHED) else None

    @property
    def label(self) -> str:
        label = SCHEME_LABELS.get(self.base_scheme, self.base_scheme)
        if FINE_TUNED in self.scheme:
            start = self.scheme.split(FINE_TUNED)[1]
            origin = start.removesuffix(PUBLISHED)
            origin = SCHEME_LABELS.get(origin, origin) + (" (published)" if start.endswith(PUBLISHED) else "")
            return f"{label}, fine-tuned from {origin}"
        return f"{label} (published)" if self.scheme.endswith(PUBLISHED) else label

    @property
    def seeds(self) -> str:
        return ",".join(str(r.seed) for r in self.runs)

    @property
    def selected_on(self) -> str:
        """The split the runs' hyperparameters were chosen on, when their summaries say."""
        splits = {r.summary.get("selected_on") or r.summary.get("run", {}).get("selected_on") for r in self.runs}
        return ",".join(sorted(str(s) for s in splits if s))

    @property
    def n_points(self) -> str:
        return ",".join(str(n) for n in sorted({r.summary.get("n_points") for r in self.runs}, key=str))


def find_summaries(patterns: list[str]) -> list[Path]:
    """``summary.json`` files named, matched by a glob, or found anywhere under a directory."""
    found: set[Path] = set()
    for pattern in patterns:
        matches = [Path(p) for p in glob.glob(pattern, recursive=True)]
        if not matches:
            raise ReportError(f"nothing matches {pattern}")
        for path in matches:
            if path.is_dir():
                found.update(p.resolve() for p in path.rglob("summary.json"))
            elif path.is_file():
                found.add(path.resolve())
    return sorted(found)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"cannot read {path} ({err})") from None


def load_runs(paths: list[Path], split: str = "test") -> tuple[list[RunResult], list[str]]:
    """The runs of ``split`` among ``paths``, and a note for every summary left out."""
    runs, notes = [], []
    summaries = {path: _read_json(path) for path in paths}
    merged = {Path(d).resolve() for s in summaries.values() for d in s.get("merged_from", [])}
    for path, summary in summaries.items():
        if summary.get("num_shards", 1) > 1:
            if path.parent in merged:  # its merged summary is among the paths
                continue
            notes.append(f"skipped {path}: shard {summary.get('shard')} of {summary['num_shards']}; "
                         f"merge the shards with python -m mmru.certification.merge")
            continue
        if summary.get("split", "test") != split:
            notes.append(f"skipped {path}: split {summary.get('split')!r}, not {split!r}")
            continue
        run = summary.get("run", {})
        scheme = str(run.get("regularizer", "?"))
        source = run.get("source") or summary.get("recipe", {}).get("source")
        scheme = ALIASES.get(scheme, scheme) + (PUBLISHED if source else "")
        init = run.get("init_from")
        if init:
            known = zoo.PUBLISHED.get(init.get("md5"))
            scheme += FINE_TUNED + (known.regularizer + PUBLISHED if known else Path(str(init.get("path"))).name)
        runs.append(RunResult(path, str(run.get("dataset", "?")), scheme, run.get("seed"), summary))
    return runs, notes


def drop_duplicates(runs: list[RunResult], keep_latest: bool) -> tuple[list[RunResult], list[str]]:
    """One run per (dataset, scheme, seed): refuse two, or keep the newest when ``keep_latest``."""
    groups: dict[tuple, list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.scheme, run.seed), []).append(run)
    kept, notes = [], []
    for (dataset, scheme, seed), group in groups.items():
        if len(group) > 1:
            where = ", ".join(str(r.path) for r in group)
            if not keep_latest:
                raise ReportError(f"{len(group)} runs of {dataset} / {scheme} / seed {seed} ({where}); "
                                  f"remove all but one or pass --keep-latest")
            group = sorted(group, key=lambda r: r.path.stat().st_mtime)
            notes.append(f"{dataset} / {scheme} / seed {seed}: kept the newest of {where}")
        kept.append(group[-1])
    return kept, notes


def _figures(summary: dict) -> dict[str, float | None]:
    """A summary's Table-1 figures in % (None where the run has no such figure)."""
    out: dict[str, float | None] = {"te": summary.get("test_error"), "worst_ub": summary.get("worst_case_ub"),
                                    "union_ub": summary.get("union_ub")}
    for norm in NORMS:
        for bound in ("lb", "ub"):
            out[f"{norm}_{bound}"] = summary[norm][bound] if norm in summary else None
    return {k: None if v is None else 100 * float(v) for k, v in out.items()}


def _compare_with_paper(row: Row) -> None:
    """Fill ``row.paper``, leaving out the norms whose ε differs from the paper's."""
    found = None if row.paper_scheme is None else paper_row(row.dataset, row.paper_scheme)
    row.paper = dict.fromkeys(COLUMNS)
    if found is None:
        return
    row.paper_dataset, published = found
    row.paper["te"] = published.te
    same_eps = True
    for norm in NORMS:
        ours = row.eps.get(norm)
        if ours is not None and not math.isclose(ours, EPS[row.paper_dataset][norm], rel_tol=1e-6):
            row.notes.append(f"{norm} eps {ours:.4g} is not the paper's {EPS[row.paper_dataset][norm]:.4g}: "
                             f"no paper figures for {norm}")
            same_eps = False
            continue
        row.paper[f"{norm}_lb"], row.paper[f"{norm}_ub"] = published.bounds(norm)
    row.paper["worst_ub"] = published.worst_ub if same_eps else None


def build_rows(runs: list[RunResult]) -> list[Row]:
    """Group runs into rows (paper order of datasets and schemes), average seeds, add the paper."""
    order = [*DATASET_NAMES, *PAPER_PROXY]
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.scheme), []).append(run)

    def rank(key: tuple[str, str]) -> tuple:
        dataset, scheme = key[0], key[1].split(FINE_TUNED)[0].removesuffix(PUBLISHED)
        return (order.index(dataset) if dataset in order else len(order), dataset,
                list(SCHEME_LABELS).index(scheme) if scheme in SCHEME_LABELS else len(SCHEME_LABELS), key[1])

    rows = []
    for key in sorted(groups, key=rank):
        group = sorted(groups[key], key=lambda r: str(r.seed))
        row = Row(*key, runs=group)
        figures = [_figures(r.summary) for r in group]
        row.ours = {c: mean(f[c] for f in figures) if all(f[c] is not None for f in figures) else None
                    for c in COLUMNS}
        epses = {(n, r.summary[n]["eps"]) for r in group for n in NORMS if n in r.summary}
        row.eps = {n: eps for n in NORMS for m, eps in sorted(epses) if m == n}
        if len(row.eps) < len(epses):
            row.notes.append("the seeds were certified at different eps")
        ubs = [row.ours[f"{n}_ub"] for n in NORMS]
        if row.ours["worst_ub"] is not None and None not in ubs and row.ours["worst_ub"] < max(ubs) - 1e-9:
            row.notes.append("worst-case UB below one of the UBs: the summary is inconsistent")
        _compare_with_paper(row)
        rows.append(row)
    return rows


def _pct(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def csv_records(rows: list[Row]) -> list[dict[str, str]]:
    """The rows as flat records: ours and the paper's value per column, in %, and provenance."""
    records = []
    for row in rows:
        record = {"dataset": row.dataset, "paper_dataset": row.paper_dataset or "", "scheme": row.scheme,
                  "model": row.label, "seeds": row.seeds, "n_points": row.n_points, "selected_on": row.selected_on}
        record.update({f"eps_{n}": f"{row.eps[n]:.6g}" if n in row.eps else "" for n in NORMS})
        for column in COLUMNS:
            record[column] = _pct(row.ours[column], 2)
            record[f"{column}_paper"] = _pct(row.paper[column], 2)
        record["recipe"] = " | ".join(describe(recipe_of(r.summary)) for r in row.runs)
        record["notes"] = "; ".join(row.notes)
        record["runs"] = ";".join(str(r.path.parent) for r in row.runs)
        records.append(record)
    return records


def write_csv(rows: list[Row], path: Path) -> None:
    records = csv_records(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def render(rows: list[Row], console: Console) -> None:
    """One rich table per dataset: ``ours (paper)`` in every cell."""
    for dataset in dict.fromkeys(r.dataset for r in rows):
        mine = [r for r in rows if r.dataset == dataset]
        source = mine[0].paper_dataset
        name = DATASET_NAMES.get(dataset, dataset)
        title = name if source in (None, dataset) else f"{dataset} (paper figures: {DATASET_NAMES[source]})"
        eps = ", ".join(f"ε{n.replace('inf', '∞')[1:]}={v:.4g}" for n, v in mine[0].eps.items())
        table = Table(title=f"{title} — {eps}", caption="robust test error in %: ours (paper)")
        table.add_column("model")
        for column in COLUMNS:
            table.add_column(HEADERS[column], justify="right")
        table.add_column("seeds / points", justify="right")
        with_selection = any(r.selected_on for r in mine)
        if with_selection:
            table.add_column("chosen on")
        for row in mine:
            cells = []
            for column in COLUMNS:
                digits = 2 if column == "te" else 1
                ours, paper = _pct(row.ours[column], digits), _pct(row.paper[column], digits)
                cells.append(f"{ours or '–'} ({paper})" if paper else ours or "–")
            extra = [row.selected_on or "–"] if with_selection else []
            table.add_row(row.label, *cells, f"{row.seeds} / {row.n_points}", *extra)
        console.print(table)
        for row in mine:
            for note in row.notes:
                console.print(f"[yellow]note[/yellow] {row.label}: {note}")


def log_wandb(rows: list[Row], out_dir: Path, online: bool) -> None:
    """The CSV's records as one W&B table (project mmru, job type report)."""
    import wandb

    records = csv_records(rows)
    with wandb.init(project="mmru", job_type="report", name="table1", dir=str(out_dir),
                    mode="online" if online else "offline") as run:
        run.log({"table1": wandb.Table(columns=list(records[0]), data=[list(r.values()) for r in records])})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmru.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="certify output dirs, summary.json files, globs, or dirs above them")
    parser.add_argument("--out", type=Path, default=Path("reports/table1"), help="where table1.csv goes")
    parser.add_argument("--name", default="table1", help="file names: <name>.csv and <name>.md (default table1)")
    parser.add_argument("--split", default="test", help="tabulate certifications of this split (default: test)")
    parser.add_argument("--keep-latest", action="store_true", help="of duplicate runs, keep the newest")
    parser.add_argument("--wandb", action="store_true", help="log the table to W&B (offline unless --online)")
    parser.add_argument("--online", action="store_true", help="with --wandb: log online")
    args = parser.parse_args(argv)
    # wide enough for every cell: a narrow terminal or a pipe (80 columns) would shorten them to '…'
    console = Console(width=max(Console().width, 170))
    try:
        runs, notes = load_runs(find_summaries(args.paths), args.split)
        runs, more = drop_duplicates(runs, args.keep_latest)
        if not runs:
            raise ReportError(f"no {args.split}-split certification (summary.json) under {' '.join(args.paths)}")
    except ReportError as err:
        sys.exit(f"error: {err}")
    rows = build_rows(runs)
    render(rows, console)
    for note in notes + more:
        console.print(f"[yellow]note[/yellow] {note}")
    write_csv(rows, args.out / f"{args.name}.csv")
    write_markdown(csv_records(rows), list(COLUMNS), HEADERS, args.out / f"{args.name}.md")
    console.print(f"wrote {args.out / f'{args.name}.csv'} and {args.out / f'{args.name}.md'}")
    if args.wandb:
        log_wandb(rows, args.out, args.online)


if __name__ == "__main__":
    main()
