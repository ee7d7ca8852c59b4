"""Per-point certification records: the resumable ``points.jsonl`` and the Table-1 summary.

One JSON line per (test point, norm). A killed run leaves at most one partial last line,
which :func:`load_records` drops, so a rerun redoes that point and loses or duplicates none.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

CERTIFIED, ATTACKED, UNDECIDED = "certified", "attacked", "undecided"


@dataclass
class PointRecord:
    """The outcome for one test point and one norm at radius ``eps``.

    ``region_radius``: min(d^B_p, |d^D_p|) of the linear region (eq 3; 0 when misclassified),
    the ρ_p that Theorem 4.1 combines across norms.
    ``certified_radius``: a proven lower bound on the minimal adversarial l_p distance r_p(x)
    (eq 4; 0 when nothing is proven), and ``certified_by`` the method that proved it.
    ``adversarial_norm``: l_p norm of the smallest checked counterexample found (None when
    none), and ``attacked_by`` its method. ``status`` at ``eps``: certified / attacked /
    undecided.
    ``radii`` (with ``radii=true``, :mod:`mmru.certification.radii`): method -> the largest
    radius it proved ("region": eq 3, open ball; the others on the closed ball), searched up to
    2 eps; a method is absent where it proved nothing above what others had. Records written
    before it existed load with None. certified_radius is the largest proven radius, always
    <= adversarial_norm.
    """

    index: int
    norm: str
    eps: float
    label: int
    correct: bool
    status: str
    region_radius: float
    certified_radius: float
    certified_by: str | None
    adversarial_norm: float | None
    attacked_by: str | None
    seconds: float
    radii: dict[str, float] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=False)


def load_records(path: Path) -> list[PointRecord]:
    """Records of an earlier (possibly killed) run; a truncated last line is dropped."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        try:
            records.append(PointRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            if number == len(lines) - 1:  # the write the kill interrupted
                break
            raise ValueError(f"{path} line {number + 1} is not a point record; delete the file to start over")
    return records


def rewrite_records(path: Path, records: list[PointRecord]) -> None:
    """Rewrite the file with only complete records (drops a torn last line before appending)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r.to_json() + "\n" for r in records))
    tmp.replace(path)


def append_records(path: Path, records: list[PointRecord]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(r.to_json() + "\n" for r in records))
        fh.flush()


def summarize(records: list[PointRecord], norms: dict[str, float], test_error: float | None) -> dict:
    """The Table-1 row: per norm LB = attacked fraction, UB = not-certified fraction.

    Misclassified points count as attacked (r_p = 0). ``worst_case_ub`` is the largest UB
    over the norms: no perturbation in any of these balls raises the robust error above it.
    """
    row: dict = {"test_error": test_error}
    for norm, eps in norms.items():
        mine = [r for r in records if r.norm == norm]
        n = len(mine)
        if n == 0:
            raise ValueError(f"no records for norm {norm}")
        attacked = sum(r.status == ATTACKED for r in mine)
        certified = sum(r.status == CERTIFIED for r in mine)
        row[norm] = {"eps": eps, "lb": attacked / n, "ub": (n - certified) / n, "n": n,
                     "certified": certified, "attacked": attacked, "undecided": n - attacked - certified}
    row["worst_case_ub"] = max(row[norm]["ub"] for norm in norms)
    row.update(union_bounds(records, norms))
    row["n_points"] = len({r.index for r in records})
    return row


def union_bounds(records: list[PointRecord], norms: dict[str, float]) -> dict:
    """Robust error under the union of the balls: the attacker may pick any one of them.

    A point is *union-certified* when it is certified in every norm, *union-attacked* when it
    is attacked (or misclassified) in at least one. ``union_ub`` = fraction not
    union-certified >= ``worst_case_ub`` (the paper's figure, a max over norms, counts a point
    uncertified only in l1 and another uncertified only in l∞ as one each in separate columns;
    the union counts both); ``union_lb`` = fraction union-attacked >= every per-norm LB.
    """
    status: dict[int, dict[str, str]] = {}
    for r in records:
        if r.norm in norms:
            status.setdefault(r.index, {})[r.norm] = r.status
    incomplete = [i for i, by_norm in status.items() if len(by_norm) != len(norms)]
    if incomplete:
        raise ValueError(f"point {incomplete[0]} lacks a record for some norm; union bounds need all of {list(norms)}")
    n = len(status)
    certified = sum(all(s == CERTIFIED for s in by_norm.values()) for by_norm in status.values())
    attacked = sum(any(s == ATTACKED for s in by_norm.values()) for by_norm in status.values())
    return {"union_lb": attacked / n, "union_ub": (n - certified) / n,
            "union": {"certified": certified, "attacked": attacked, "undecided": n - certified - attacked, "n": n}}


def check_coverage(records: list[PointRecord], indices: list[int], norms: list[str]) -> None:
    """Refuse overlaps and gaps when merging shards: every (point, norm) exactly once."""
    seen: dict[tuple[int, str], int] = {}
    for r in records:
        seen[(r.index, r.norm)] = seen.get((r.index, r.norm), 0) + 1
    duplicated = sorted({k for k, v in seen.items() if v > 1})
    if duplicated:
        raise ValueError(f"{len(duplicated)} (point, norm) pairs appear in several shards, e.g. {duplicated[0]}")
    missing = [(i, n) for i in indices for n in norms if (i, n) not in seen]
    if missing:
        raise ValueError(f"{len(missing)} (point, norm) pairs are missing, e.g. point {missing[0][0]} in {missing[0][1]}")


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
