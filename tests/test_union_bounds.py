"""Union bounds of the summary: certified in every norm / attacked in at least one."""

import pytest

from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, PointRecord, summarize

EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}


def _rec(index: int, norm: str, status: str) -> PointRecord:
    attacked = status == ATTACKED
    return PointRecord(index=index, norm=norm, eps=EPS[norm], label=0, correct=True, status=status,
                       region_radius=0.0, certified_radius=EPS[norm] if status == CERTIFIED else 0.0,
                       certified_by="kw" if status == CERTIFIED else None,
                       adversarial_norm=EPS[norm] / 2 if attacked else None, attacked_by="pgd" if attacked else None,
                       seconds=0.0)


C, A, U = CERTIFIED, ATTACKED, UNDECIDED
#: per point the statuses in (l1, l2, linf)
TABLE = [
    (C, C, C),  # union-certified
    (U, C, C),  # uncertified in l1 only
    (C, C, U),  # uncertified in linf only
    (A, C, C),  # attacked in l1 only
    (C, U, A),  # attacked in linf, undecided in l2
    (C, C, C),  # union-certified
]


def _records():
    return [_rec(i, norm, s) for i, row in enumerate(TABLE) for norm, s in zip(EPS, row)]


def test_union_bounds_count_points_not_norms():
    row = summarize(_records(), EPS, test_error=0.0)
    # per norm: l1 UB 2/6 (U, A), l2 UB 1/6, linf UB 2/6: worst case 2/6
    assert row["worst_case_ub"] == pytest.approx(2 / 6)
    # union: only points 0 and 5 are certified in every norm
    assert row["union_ub"] == pytest.approx(4 / 6)
    # union LB: points 3 and 4 are attacked in some norm; per-norm LBs are 1/6 each
    assert row["union_lb"] == pytest.approx(2 / 6)
    assert max(row[n]["lb"] for n in EPS) == pytest.approx(1 / 6)
    assert row["union"] == {"certified": 2, "attacked": 2, "undecided": 2, "n": 6}


def test_union_bounds_refuse_a_point_missing_a_norm():
    records = _records()[:-1]  # the last point lacks its linf record
    with pytest.raises(ValueError, match="lacks a record"):
        summarize(records, EPS, test_error=0.0)
