"""Merge the shards of one certification into one Table-1 row.

    python -m mmru.certification.merge <run dir>/certify/shard*of4 --out <run dir>/certify

Refuses shards of different checkpoints, radii, norms or splits, and overlaps or gaps in the points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmru.certification.curves import robustness_curves, universal_curve
from mmru.certification.outputs import print_row
from mmru.certification.records import check_coverage, load_records, rewrite_records, summarize


def merge_shards(shard_dirs: list[Path], out_dir: Path) -> dict:
    summaries = [json.loads((d / "summary.json").read_text()) for d in shard_dirs]
    first = summaries[0]
    num_shards = first["num_shards"]
    norms = [n for n in ("l1", "l2", "linf") if n in first]
    for s in summaries[1:]:
        if [n for n in ("l1", "l2", "linf") if n in s] != norms or s["split"] != first["split"]:
            raise ValueError("the shards certify different norms or splits")
        if s["run"]["checkpoint"] != first["run"]["checkpoint"] or any(s[n]["eps"] != first[n]["eps"] for n in norms):
            raise ValueError("the shards come from different checkpoints or radii")
    shards = sorted(s["shard"] for s in summaries)
    if shards != list(range(num_shards)) or any(s["num_shards"] != num_shards for s in summaries):
        raise ValueError(f"expected shards 0..{num_shards - 1} of {num_shards}, got {shards}")
    records = [r for d in shard_dirs for r in load_records(d / "points.jsonl")]
    n_points = max(r.index for r in records) + 1
    check_coverage(records, list(range(n_points)), norms)
    eps = {n: first[n]["eps"] for n in norms}
    records.sort(key=lambda r: (r.index, r.norm))
    summary = summarize(records, eps, first["test_error"])
    timings: dict[str, float] = {}
    for s in summaries:
        for k, v in s.get("timings_seconds", {}).items():
            timings[k] = timings.get(k, 0.0) + v
    summary.update(split=first["split"], shard=0, num_shards=1, merged_from=[str(d) for d in shard_dirs],
                   run=first["run"], timings_seconds=timings, curves=robustness_curves(records, eps),
                   universal_curve=universal_curve(records, first["input_dim"]), input_dim=first["input_dim"])
    out_dir.mkdir(parents=True, exist_ok=True)
    rewrite_records(out_dir / "points.jsonl", records)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        summary = merge_shards(args.shards, args.out)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print_row(summary)


if __name__ == "__main__":
    main()
