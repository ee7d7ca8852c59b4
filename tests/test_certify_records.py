"""points.jsonl resume, Table-1 summaries, shard coverage, and safe checkpoint loading."""

import pickle

import pytest
import torch

from mmru.certification.checkpoint import load_checkpoint
from mmru.certification.records import (
    ATTACKED,
    CERTIFIED,
    UNDECIDED,
    PointRecord,
    append_records,
    check_coverage,
    load_records,
    summarize,
)
from mmru.cli import UserError
from mmru.models import mlp
from mmru.module import RobustClassifier


def record(index, norm, status, eps=0.1):
    return PointRecord(index=index, norm=norm, eps=eps, label=0, correct=status != "miss", status=status,
                       region_radius=0.0, certified_radius=0.2 if status == CERTIFIED else 0.0,
                       certified_by="region" if status == CERTIFIED else None,
                       adversarial_norm=0.05 if status == ATTACKED else None,
                       attacked_by="pgd" if status == ATTACKED else None, seconds=0.1)


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "points.jsonl"
    append_records(path, [record(0, "l1", CERTIFIED), record(1, "l1", ATTACKED)])
    with open(path, "a") as fh:
        fh.write('{"index": 2, "norm": "l1", "ep')  # a kill in the middle of a write
    assert [r.index for r in load_records(path)] == [0, 1]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text(record(0, "l1", CERTIFIED).to_json() + "\nnot json\n" + record(1, "l1", CERTIFIED).to_json() + "\n")
    with pytest.raises(ValueError, match="line 2"):
        load_records(path)


def test_summary_counts_lb_and_ub():
    records = [record(0, "l1", CERTIFIED), record(1, "l1", ATTACKED), record(2, "l1", UNDECIDED),
               record(3, "l1", CERTIFIED), record(0, "linf", ATTACKED), record(1, "linf", ATTACKED),
               record(2, "linf", CERTIFIED), record(3, "linf", CERTIFIED)]
    row = summarize(records, {"l1": 1.0, "linf": 0.1}, test_error=0.25)
    assert row["l1"]["lb"] == 0.25 and row["l1"]["ub"] == 0.5
    assert row["linf"]["lb"] == 0.5 and row["linf"]["ub"] == 0.5
    assert row["worst_case_ub"] == 0.5 and row["n_points"] == 4
    # the undecided point counts in UB only, certified points in neither
    assert (row["l1"]["certified"], row["l1"]["attacked"], row["l1"]["undecided"]) == (2, 1, 1)
    assert (row["linf"]["certified"], row["linf"]["attacked"], row["linf"]["undecided"]) == (2, 2, 0)
    assert row["test_error"] == 0.25 and row["l1"]["eps"] == 1.0 and row["l1"]["n"] == 4


def test_summary_gap_and_worst_case_come_from_the_records():
    """LB < UB exactly by the undecided points; the worst case is the norm with most uncertified."""
    records = [record(i, "l1", status) for i, status in enumerate([CERTIFIED, UNDECIDED, UNDECIDED, ATTACKED])]
    records += [record(i, "l2", status) for i, status in enumerate([CERTIFIED, CERTIFIED, CERTIFIED, ATTACKED])]
    row = summarize(records, {"l1": 1.0, "l2": 0.3}, test_error=0.0)
    assert row["l1"]["ub"] - row["l1"]["lb"] == 0.5 and row["l2"]["ub"] == row["l2"]["lb"] == 0.25
    assert row["worst_case_ub"] == row["l1"]["ub"] == 0.75
    with pytest.raises(ValueError, match="no records for norm linf"):
        summarize(records, {"l1": 1.0, "linf": 0.1}, test_error=0.0)


def test_coverage_refuses_overlaps_and_gaps():
    records = [record(0, "l1", CERTIFIED), record(1, "l1", CERTIFIED)]
    check_coverage(records, [0, 1], ["l1"])
    with pytest.raises(ValueError, match="several shards"):
        check_coverage(records + [record(1, "l1", ATTACKED)], [0, 1], ["l1"])
    with pytest.raises(ValueError, match="missing"):
        check_coverage(records, [0, 1, 2], ["l1"])


def _save_checkpoint(path, net, recipe):
    module = RobustClassifier(net, net_config=recipe, run_config={"dataset": "mnist5k", "eps": {"l1": 1.0}})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


def test_checkpoint_round_trip(tmp_path):
    recipe = {"_target_": "mmru.models.mlp", "input_shape": [1, 4, 4], "num_classes": 3, "widths": [5]}
    net = mlp((1, 4, 4), 3, (5,))
    _save_checkpoint(tmp_path / "a.ckpt", net, recipe)
    loaded, run = load_checkpoint(tmp_path / "a.ckpt")
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(loaded(x), net(x))
    assert run["dataset"] == "mnist5k" and not loaded.training


def test_bad_checkpoints_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "corrupt.ckpt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.ckpt", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.ckpt")
    recipe = {"_target_": "mmru.models.mlp", "input_shape": [1, 4, 4], "num_classes": 3, "widths": [7]}
    _save_checkpoint(tmp_path / "mismatch.ckpt", mlp((1, 4, 4), 3, (5,)), recipe)
    with pytest.raises(UserError, match="does not match"):
        load_checkpoint(tmp_path / "mismatch.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="not written by mmru"):
        load_checkpoint(tmp_path / "foreign.ckpt")
