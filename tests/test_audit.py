"""python -m mmru.audit: silent on a sound certification, loud on a broken certifier.

A small MLP trained on mnist5k is certified by the real pipeline (``run_certification``);
the broken certifier is the same pipeline with bound propagation replaced by one that
certifies everything, so attackable points end up "certified" with consistent records.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

import mmru.certification.cascade as cascade
from mmru.audit import AuditOptions, run_audit
from mmru.audit.__main__ import main
from mmru.audit.consistency import record_violations
from mmru.audit.exact import exact_check
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, load_records, rewrite_records
from mmru.certification.runner import run_certification
from mmru.data import load_mnist5k
from mmru.models import mlp
from mmru.module import RobustClassifier
from mmru.training import compose_config
from mmru.verify import mip_min_distance
from tiny_nets import through_the_box

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"l1": 2.0, "l2": 0.5, "linf": 0.05}
#: a short long-PGD: the tests check the audit's logic, not attack strength
CHEAP = dict(attacks=("pgd",), pgd_steps=20, pgd_restarts=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """<run>/checkpoints/last.ckpt of a 16-unit MLP fit to mnist5k (about 95% train accuracy)."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    x, y = load_mnist5k("train").tensors
    net = mlp((1, 28, 28), 10, (16,))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    recipe = {"_target_": "mmru.models.mlp", "input_shape": [1, 28, 28], "num_classes": 10, "widths": [16]}
    module = RobustClassifier(net, net_config=recipe,
                              run_config={"dataset": "mnist5k", "eps": EPS, "seed": 0, "val_fraction": 0.0})
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


def certify(ckpt, out_dir, *overrides):
    # no attacks in the cascade: points it cannot certify stay undecided (cheaper, same audit)
    run_certification(compose_config("certify", [f"ckpt={ckpt}", f"out_dir={out_dir}", "n_points=12", "attack=none",
                                                 "mip=false", "wandb.enabled=false", "progress=false", *overrides]))
    return out_dir


@pytest.fixture(scope="module")
def genuine(checkpoint):
    return certify(checkpoint, checkpoint.parent.parent / "certify")


@pytest.fixture
def certify_everything(monkeypatch):
    """The broken certifier: bound propagation 'proves' every ball robust."""
    monkeypatch.setattr(cascade, "bound_certify", lambda net, x, y, eps, p, method: torch.ones(len(x), dtype=torch.bool))


def test_a_sound_certification_passes(genuine):
    statuses = {r.status for r in load_records(genuine / "points.jsonl")}
    assert statuses == {CERTIFIED, ATTACKED, UNDECIDED}  # the run is not trivial
    result = run_audit(genuine, AuditOptions(**CHEAP))
    assert result["ok"] and result["violations"] == []
    assert json.loads((genuine / "audit.json").read_text()) == result
    summary = json.loads((genuine / "summary.json").read_text())
    for norm in EPS:
        entry = result["norms"][norm]
        assert entry["attacked_by_audit"] == entry["certified"] == summary[norm]["certified"] > 0


def test_a_certifier_that_certifies_everything_is_caught(checkpoint, genuine, certify_everything, tmp_path, capsys):
    broken = certify(checkpoint, tmp_path / "broken")
    not_certified = {(r.index, r.norm) for r in load_records(genuine / "points.jsonl") if r.status != CERTIFIED}
    assert main([str(broken), "--attacks", "pgd", "--pgd-steps", "20", "--pgd-restarts", "2"]) == 1
    result = json.loads((broken / "audit.json").read_text())
    caught = {(v["index"], v["norm"]) for v in result["violations"] if v["kind"] == "counterexample"}
    assert caught and caught <= not_certified  # genuinely certified points are never "broken"
    assert result["violation_counts"] == {"counterexample": len(caught)} and not result["ok"]
    index, norm = sorted(caught)[0]
    assert f"point {index} {norm}: counterexample" in capsys.readouterr().out


def test_autoattack_catches_it_too(checkpoint, genuine, certify_everything, tmp_path):
    # l∞ only, the first 9 points: none of them is robust (the genuine run certifies none), so
    # AutoAttack stops as soon as all are broken
    broken = certify(checkpoint, tmp_path / "broken", "norms=[linf]")
    result = run_audit(broken, AuditOptions(attacks=("autoattack",), n_points=9))
    first = [r for r in load_records(genuine / "points.jsonl") if r.norm == "linf" and r.index < 9]
    assert not any(r.status == CERTIFIED for r in first)
    correct = {r.index for r in first if r.correct}
    caught = {v["index"] for v in result["violations"] if v["kind"] == "counterexample"}
    assert result["norms"]["linf"]["attacked_by_audit"] == len(correct) >= 4
    assert caught <= correct and 2 * len(caught) >= len(correct)
    assert {v["attack"] for v in result["violations"]} == {"autoattack"}


def test_forged_records_are_inconsistent(genuine, tmp_path):
    shutil.copytree(genuine, tmp_path / "c")
    records = load_records(tmp_path / "c" / "points.jsonl")
    miss = next(r for r in records if not r.correct)
    miss.status, miss.adversarial_norm = CERTIFIED, None
    hit = next(r for r in records if r.status == UNDECIDED)
    hit.status, hit.adversarial_norm = ATTACKED, 2 * hit.eps  # a counterexample claim outside the ball
    rewrite_records(tmp_path / "c" / "points.jsonl", records)
    kinds = {(v["index"], v["kind"]) for v in record_violations(records, EPS)}
    assert {(miss.index, "certified_misclassified"), (miss.index, "misclassified_not_attacked"),
            (hit.index, "attacked_without_counterexample")} <= kinds
    result = run_audit(tmp_path / "c", AuditOptions(attacks=()))
    assert {"summary_mismatch", "certified_misclassified", "attacked_without_counterexample"} <= set(
        result["violation_counts"])
    # a misclassified point called certified is "broken" by the clean point itself
    assert (miss.index, "clean") in {(v["index"], v.get("attack")) for v in result["violations"]}


def test_bad_input_is_one_sentence(genuine, tmp_path, checkpoint):
    with pytest.raises(SystemExit, match="is not a directory"):
        main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="is not a certify directory"):
        main([str(tmp_path)])
    shutil.copytree(genuine, tmp_path / "c")
    records = load_records(tmp_path / "c" / "points.jsonl")
    records[0].label = (records[0].label + 1) % 10  # records of other data
    rewrite_records(tmp_path / "c" / "points.jsonl", records)
    with pytest.raises(SystemExit, match="label"):
        main([str(tmp_path / "c"), "--attacks", "none"])
    with pytest.raises(SystemExit, match="unknown attack"):
        main([str(genuine), "--attacks", "cw"])


def test_exact_comparison_catches_radii_beyond_the_exact_distance():
    """On a 2-D net the MIP's exact distance is cheap: genuine records pass, forged ones do not."""
    net = through_the_box(mlp((2,), 3, (8, 8)), 3).float().eval()
    x = torch.rand(12, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = {"l1": 0.08, "linf": 0.05}
    records = certify_batch(net, list(range(12)), x, y, eps, CascadeOptions(attack="none", mip_time_limit=20),
                            defaultdict(float))
    position = {i: i for i in range(12)}
    for norm, p in (("l1", 1.0), ("linf", math.inf)):
        mine = [r for r in records if r.norm == norm]
        report, found = exact_check(net, x, y, position, mine, p)
        assert found == [] and report.not_optimal == [] and report.compared > 0
        target = next(r for r in mine if r.status == CERTIFIED)
        exact = mip_min_distance(net, x[target.index : target.index + 1], int(y[target.index]), p)
        assert exact.optimal
        target.certified_radius = 1.01 * exact.distance  # a certificate 1% too large
        target.adversarial_norm = 0.99 * exact.lower  # a counterexample 1% too close
        _, found = exact_check(net, x, y, position, [target], p)
        assert {v["kind"] for v in found} == {"radius_above_exact", "counterexample_below_exact"}


def test_a_certified_model_file_is_audited_and_must_be_the_same_file(tmp_path):
    """A certification of a model from elsewhere (here the published MNIST network, on mnist5k's test
    points) is audited from its model file; another file under that name is refused."""
    from pathlib import Path

    zoo = Path(__file__).resolve().parents[1] / "zoo" / "croce-hein-2020"
    model = tmp_path / "mmr_univ_mnist.mat"
    shutil.copy(zoo / "mmr_univ_mnist.mat", model)
    out = tmp_path / "certify"
    run_certification(compose_config("certify", [f"model_file={model}", "dataset=mnist5k", f"out_dir={out}",
                                                 "n_points=4", "bounds=[crown]", "attack=none", "mip=false",
                                                 "wandb.enabled=false", "progress=false"]))
    result = run_audit(out, AuditOptions(**CHEAP))
    assert result["ok"] and result["violations"] == []
    shutil.copy(zoo / "mmr_univ_fmnist.mat", model)
    with pytest.raises(Exception, match="is not the model file the run certified"):
        run_audit(out, AuditOptions(**CHEAP))
