"""``mip_scope='union'``: the exact stage only where the union verdict is open (attacked in no norm),
l_inf first. Its union bounds must be those of the full exact stage, point by point; it must skip
every point already attacked in some norm and no other; its per-norm certificates stay sound."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

import mmru
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, summarize
from mmru.errors import ConfigError
from mmru.models import mlp
from mmru.report_markdown import describe, recipe_of
from mmru.training import compose_config
from mmru.validation import validate_certify_config
from mmru.verify import mip_verify
from test_verify_miqp import _net, _points

INF = math.inf
NAMES = {1.0: "l1", 2.0: "l2", INF: "linf"}
pytestmark = pytest.mark.usefixtures("one_thread")

#: seed-0 tiny net and these radii: points attacked in l_inf only by the MIP, others certified in all
EPS = {"l1": 0.06, "l2": 0.045, "linf": 0.03}


def _run(monkeypatch, scope: str):
    """The records with bounds and attacks off (the MIP decides), and the (point, norm) of each MIP job in
    the order they ran."""
    net = _net(0)
    x, y = _points(net, 10, seed=30)
    jobs = []

    def spy(net64, xq, yq, eps, p, **kw):
        jobs.append((next(i for i in range(len(x)) if torch.equal(x[i], xq.flatten())), NAMES[p]))
        return mip_verify(net64, xq, yq, eps, p, **kw)

    monkeypatch.setattr("mmru.certification.mip_pool.mip_verify", spy)
    options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, mip_scope=scope)
    records = certify_batch(net, list(range(len(x))), x, y, EPS, options, defaultdict(float))
    return {(r.index, r.norm): r for r in records}, jobs


def test_union_scope_gives_the_union_bounds_of_the_full_exact_stage(monkeypatch):
    full, full_jobs = _run(monkeypatch, "all")
    union, union_jobs = _run(monkeypatch, "union")
    assert UNDECIDED not in {r.status for r in full.values()}  # the full stage decides every point here
    points = {i for i, _ in full}
    for i in points:
        assert ({full[i, n].status for n in EPS} == {CERTIFIED}) == ({union[i, n].status for n in EPS} == {CERTIFIED})
        assert (ATTACKED in {full[i, n].status for n in EPS}) == (ATTACKED in {union[i, n].status for n in EPS})
    for key, record in union.items():  # per norm: never a verdict the full stage contradicts
        assert record.status in (full[key].status, UNDECIDED)
    a, b = summarize(list(full.values()), EPS, 0.0), summarize(list(union.values()), EPS, 0.0)
    assert (a["union_lb"], a["union_ub"]) == (b["union_lb"], b["union_ub"])
    # l_inf runs first, and its counterexamples spare those points the other norms' programs
    assert [n for _, n in union_jobs] == sorted((n for _, n in union_jobs), key=["linf", "l1", "l2"].index)
    linf_attacked = {i for i in points if union[i, "linf"].attacked_by == "mip"}
    assert linf_attacked  # the case the scope is for occurs on these points
    assert not {i for i, n in union_jobs if n != "linf"} & linf_attacked
    assert set(union_jobs) < set(full_jobs)
    # every job it skipped was on a point attacked in some norm
    for i, n in set(full_jobs) - set(union_jobs):
        assert any(union[i, m].status == ATTACKED for m in EPS)


def test_mip_scope_is_checked_recorded_and_labelled():
    from mmru.certification.runner import _recipe

    assert compose_config("certify", ["ckpt=x.ckpt"]).mip_scope == "all"
    assert _recipe({}, CascadeOptions(mip_scope="union"), [], 0.0, 1)["mip_scope"] == "union"
    with pytest.raises(ConfigError, match=r"^mip_scope must be one of all, union"):
        validate_certify_config(compose_config("certify", ["ckpt=x.ckpt", "mip_scope=norms"]))
    with pytest.raises(ConfigError, match="^mip_scope must be 'all' or 'union'"):
        mmru.certify(mlp((4,), 3, (8,)), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), {"l1": 0.1},
                     mip_scope="norms")
    summary = {"n_points": 1000, "run": {"dataset": "mnist"},
               "recipe": {"epochs": 100, "mip": True, "mip_time_limit": 120.0, "mip_scope": "union"}}
    assert "per-norm UBs looser, union exact" in describe(recipe_of(summary))
    summary["recipe"]["mip_scope"] = "all"
    assert describe(recipe_of(summary)).startswith("paper's recipe")
