"""The comparison table from the runs' certify/summary.json files (Markdown, to stdout).

    python reports/union_mnist5k/collect.py logs/union/runs/*/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["universal", "ibp_union", "crown_ibp_union", "universal_ibp"]


def row(run: Path) -> tuple[str, str]:
    s = json.loads((run / "certify" / "summary.json").read_text())
    name = s["run"]["regularizer"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    cells = [name, pct(s["test_error"])]
    for norm in ("l1", "l2", "linf"):
        cells += [pct(s[norm]["lb"]), pct(s[norm]["ub"])]
    cells += [pct(s["worst_case_ub"]), pct(s["union_lb"]), pct(s["union_ub"])]
    return name, "| " + " | ".join(cells) + " |"


def main(runs: list[str]) -> None:
    rows = dict(row(Path(r)) for r in runs if (Path(r) / "certify" / "summary.json").exists())
    print("| scheme | TE | l1 LB | l1 UB | l2 LB | l2 UB | l∞ LB | l∞ UB | worst-case UB | union LB | union UB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(rows, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        print(rows[name])


if __name__ == "__main__":
    main(sys.argv[1:])
