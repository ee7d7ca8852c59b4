"""Claims a certification's records make about themselves, checked without the network.

Each record states a status at radius eps and the numbers it rests on (see
:class:`mmru.certification.records.PointRecord`); these must agree with one another and with
the Table-1 counts of ``summary.json``. A counterexample's norm is an upper bound on the
minimal adversarial distance r_p(x), a certified radius a lower bound (eq 4): a record whose
counterexample lies closer than its certified radius contradicts itself.
"""

from __future__ import annotations

from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, PointRecord

#: methods that certify the closed ball of radius eps (their certified_radius is eps itself)
CLOSED_BALL = ("ibp", "kw", "crown", "mip")


def violation(kind: str, index: int | None, norm: str | None, detail: str, **numbers) -> dict:
    """One line of audit.json's ``violations``."""
    return {"kind": kind, "index": index, "norm": norm, "detail": detail, **numbers}


def record_violations(records: list[PointRecord], eps: dict[str, float]) -> list[dict]:
    """Every record whose status does not follow from its own numbers, or whose norm or radius
    the summary does not know."""
    found, seen = [], set()
    for r in records:
        if (r.index, r.norm) in seen:
            found.append(violation("duplicate_record", r.index, r.norm, "a second record for this point and norm"))
        seen.add((r.index, r.norm))
        if r.norm not in eps:
            found.append(violation("unknown_norm", r.index, r.norm, "a record for a norm the summary does not report"))
            continue
        if r.eps != eps[r.norm]:
            found.append(violation("eps_mismatch", r.index, r.norm, f"record eps {r.eps} != summary eps {eps[r.norm]}"))
        found += [violation(kind, r.index, r.norm, detail, eps=r.eps, certified_radius=r.certified_radius,
                            adversarial_norm=r.adversarial_norm) for kind, detail in _record_problems(r)]
    return found


def _record_problems(r: PointRecord) -> list[tuple[str, str]]:
    problems = []
    adv = r.adversarial_norm
    if r.status not in (CERTIFIED, ATTACKED, UNDECIDED):
        problems.append(("unknown_status", f"status {r.status!r}"))
    if not r.correct and (r.status != ATTACKED or adv != 0.0):
        problems.append(("misclassified_not_attacked", "a misclassified point must be attacked at distance 0"))
    if r.status == CERTIFIED:
        if not r.correct:
            problems.append(("certified_misclassified", "certified although misclassified"))
        closed = r.certified_by in CLOSED_BALL
        if r.certified_radius < r.eps or (r.certified_radius == r.eps and not closed):
            problems.append(("certified_below_eps", f"certified by {r.certified_by} with radius "
                                                    f"{r.certified_radius} <= eps"))
    if r.status == ATTACKED and (adv is None or adv > r.eps):
        problems.append(("attacked_without_counterexample", f"attacked, counterexample norm {adv} > eps"))
    if r.status != ATTACKED and adv is not None and adv <= r.eps:
        problems.append(("counterexample_ignored", f"{r.status} with a counterexample of norm {adv} <= eps"))
    if r.status != CERTIFIED and r.certified_radius > r.eps:
        problems.append(("certificate_ignored", f"{r.status} with a certified radius {r.certified_radius} > eps"))
    if adv is not None and r.certified_radius > 0 and adv < r.certified_radius:
        problems.append(("counterexample_inside_certified_radius",
                         f"counterexample norm {adv} < certified radius {r.certified_radius}"))
    return problems


def summary_violations(records: list[PointRecord], summary: dict, eps: dict[str, float]) -> list[dict]:
    """The summary's per-norm counts must be those of the records (when it covers them all)."""
    found = []
    for norm in eps:
        mine = [r for r in records if r.norm == norm]
        counts = {"certified": sum(r.status == CERTIFIED for r in mine),
                  "attacked": sum(r.status == ATTACKED for r in mine), "n": len(mine)}
        stated = {k: summary[norm].get(k) for k in counts}
        if stated != counts:
            found.append(violation("summary_mismatch", None, norm, f"summary.json says {stated}, the records {counts}"))
    return found
