"""certify.py end to end: outputs, resume, shards, the validation split, and bad input."""

import json

import pytest
import torch

import mmru.certification.runner as runner
from mmru.certification.merge import merge_shards
from mmru.certification.records import load_records
from mmru.certification.runner import run_certification, shard_indices
from mmru.cli import user_errors
from mmru.training import build_datamodule, compose_config, compose_train_config, train

FAST = ["n_points=12", "batch_size=6", "attack=fast", "mip=false", "wandb.enabled=false", "progress=false"]
VAL_FRACTION = 0.1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One epoch on 512 mnist5k points, with a validation split (the split=val test needs it)."""
    out = tmp_path_factory.mktemp("train")
    cfg = compose_train_config(["logger=none", "datamodule.limit_train=512", "trainer.max_epochs=1",
                                f"dataset.val_fraction={VAL_FRACTION}", "+trainer.limit_val_batches=1",
                                "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], out)
    return train(cfg)["checkpoint"]


def certify(checkpoint, out_dir, *overrides):
    return run_certification(compose_config("certify", [f"ckpt={checkpoint}", f"out_dir={out_dir}", *FAST,
                                                        *overrides]))


@pytest.fixture
def certified_points(monkeypatch):
    """The (index, input) pairs the cascade is run on, in order: a spy on ``certify_batch``."""
    seen = []

    def spy(net, indices, x, *args):
        seen.extend(zip(indices, x))
        return certify_batch(net, indices, x, *args)

    certify_batch = runner.certify_batch
    monkeypatch.setattr(runner, "certify_batch", spy)
    return seen


def test_summary_and_points_are_written(checkpoint, tmp_path, capfd):
    summary = certify(checkpoint, tmp_path, "mip=true", "mip_time_limit=1")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["n_points"] == 12 and 0 <= saved["test_error"] <= 1
    for norm, eps in (("l1", 1.0), ("l2", 0.3), ("linf", 0.1)):  # mnist5k's eps from the checkpoint
        assert saved[norm]["eps"] == eps and 0 <= saved[norm]["lb"] <= saved[norm]["ub"] <= 1
    assert saved["worst_case_ub"] == max(saved[n]["ub"] for n in ("l1", "l2", "linf")) == summary["worst_case_ub"]
    records = load_records(tmp_path / "points.jsonl")
    assert len(records) == 36 and {r.status for r in records} <= {"certified", "attacked", "undecided"}
    assert (tmp_path / "robustness_curves.png").stat().st_size > 1000
    assert (tmp_path / "universal_curve.png").stat().st_size > 1000
    console = capfd.readouterr()
    assert "HiGHS" not in console.out + console.err  # no solver banner among the results


def test_killed_run_resumes_its_complete_points_byte_for_byte(checkpoint, tmp_path, certified_points):
    certify(checkpoint, tmp_path, "n_points=6", "attack=none")  # no attack needed to test resuming
    lines = (tmp_path / "points.jsonl").read_text().splitlines(keepends=True)
    # One batch of 6 points, written norm by norm: l1 of points 0-5, then l2, then linf.
    assert [json.loads(line)["index"] for line in lines] == list(range(6)) * 3
    # A kill while writing the linf lines: point 4's torn, point 5's missing.
    (tmp_path / "points.jsonl").write_text("".join(lines[:16]) + lines[16][:25])
    certified_points.clear()
    certify(checkpoint, tmp_path, "attack=none")
    # points 0-3 are kept as they were, not recomputed; the half-written points 4 and 5 are redone
    assert [i for i, _ in certified_points] == list(range(4, 12))
    kept = [line for line in lines if json.loads(line)["index"] < 4]
    resumed = (tmp_path / "points.jsonl").read_text().splitlines(keepends=True)
    assert set(kept) <= set(resumed)
    keys = [(r.index, r.norm) for r in load_records(tmp_path / "points.jsonl")]
    assert len(keys) == len(set(keys)) == 36 and {i for i, _ in keys} == set(range(12))


def test_retry_undecided_reruns_exactly_the_undecided_points_with_the_new_options(checkpoint, tmp_path,
                                                                                 certified_points):
    """A first pass without bounds leaves points undecided; retry_undecided=true with CROWN redoes those
    points (all their norms) and nothing else, and the result is that of one run with CROWN."""
    certify(checkpoint, tmp_path / "two", "attack=none", "bounds=[]")
    first = load_records(tmp_path / "two" / "points.jsonl")
    undecided = sorted({r.index for r in first if r.status == "undecided"})
    assert 0 < len(undecided) < 12
    certified_points.clear()
    certify(checkpoint, tmp_path / "two", "attack=none", "bounds=[crown]", "retry_undecided=true")
    assert [i for i, _ in certified_points] == undecided
    certify(checkpoint, tmp_path / "one", "attack=none", "bounds=[crown]")
    status = lambda d: {(r.index, r.norm): r.status for r in load_records(tmp_path / d / "points.jsonl")}  # noqa: E731
    assert status("two") == status("one")
    certified_points.clear()
    certify(checkpoint, tmp_path / "two", "attack=none", "bounds=[crown]")  # without the flag: all kept
    assert certified_points == []


def test_validation_split_is_certified_on_the_held_out_training_points(checkpoint, tmp_path, certified_points):
    """split=val certifies the points training held out (same fraction and seed), not test points."""
    summary = certify(checkpoint, tmp_path / "val", "split=val", "attack=none")
    assert summary["split"] == "val"
    # The held-out points as the training run drew them (its datamodule config, seed 0).
    data = build_datamodule(compose_train_config([f"dataset.val_fraction={VAL_FRACTION}"], tmp_path))
    data.setup("fit")
    assert len(data.val_set) == 400
    labels = {r.index: r.label for r in load_records(tmp_path / "val" / "points.jsonl")}
    assert [i for i, _ in certified_points] == list(range(12)) and set(labels) == set(range(12))
    for index, x in certified_points:
        held_out, label = data.val_set[index]
        assert torch.equal(x, held_out) and labels[index] == label
    # Test points give other inputs, and so other records.
    certified_points.clear()
    certify(checkpoint, tmp_path / "test", "attack=none")
    test_inputs = torch.stack([x for _, x in certified_points])
    val_inputs = torch.stack([data.val_set[i][0] for i in range(12)])
    assert not any(torch.equal(a, b) for a in test_inputs for b in val_inputs)
    test_labels = {r.index: r.label for r in load_records(tmp_path / "test" / "points.jsonl")}
    assert test_labels != labels


def test_a_model_files_validation_split_is_the_one_train_py_holds_out(tmp_path, certified_points):
    """model_file= with split=val certifies the points train.py holds out at dataset.val_fraction and seed
    val_seed (a fine-tune of the file and the file itself compared on the same points); without the
    fraction, one sentence."""
    from pathlib import Path

    mat = Path(__file__).resolve().parents[1] / "zoo" / "croce-hein-2020" / "mmr_univ_mnist.mat"
    base = [f"model_file={mat}", "dataset=mnist5k", "split=val", *FAST, "n_points=4", "attack=none",
            "bounds=[crown]"]
    for seed in (0, 3):
        certified_points.clear()
        run_certification(compose_config("certify", [*base, f"out_dir={tmp_path / str(seed)}",
                                                     f"dataset.val_fraction={VAL_FRACTION}", f"val_seed={seed}"]))
        data = build_datamodule(compose_train_config([f"dataset.val_fraction={VAL_FRACTION}", f"seed={seed}"],
                                                     tmp_path))
        data.setup("fit")
        assert [i for i, _ in certified_points] == list(range(4))
        for index, x in certified_points:
            assert torch.equal(x, data.val_set[index][0])
    with pytest.raises(Exception, match="split=val with model_file= needs dataset.val_fraction"):
        run_certification(compose_config("certify", [*base, f"out_dir={tmp_path / 'none'}"]))


def test_shards_merge_into_the_single_run_row(checkpoint, tmp_path):
    # Without attacks every stage is deterministic, so the rows must agree exactly.
    deterministic = ["attack=none"]
    single = certify(checkpoint, tmp_path / "single", *deterministic)
    for shard in (0, 1):
        certify(checkpoint, tmp_path / f"s{shard}", *deterministic, f"shard={shard}", "num_shards=2")
    merged = merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    for norm in ("l1", "l2", "linf"):
        assert merged[norm] == single[norm]
    assert merged["worst_case_ub"] == single["worst_case_ub"]
    with pytest.raises(ValueError, match="shards 0..1"):
        merge_shards([tmp_path / "s0"], tmp_path / "bad")


def test_shards_are_disjoint_and_cover():
    parts = [shard_indices(10, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))


def test_changed_eps_does_not_mix_with_old_records(checkpoint, tmp_path):
    certify(checkpoint, tmp_path, "n_points=6", "attack=none")
    with pytest.raises(Exception, match="eps"):
        certify(checkpoint, tmp_path, "n_points=6", "eps.linf=0.05")


@pytest.mark.parametrize("args,expected", [
    (["ckpt=/nonexistent.ckpt"], "error: checkpoint /nonexistent.ckpt does not exist"),
    ([], "error: give the checkpoint to certify"),
    (["ckpt=zoo/net.mat"], "error: zoo/net.mat is a model file, not a train.py checkpoint: give it as model_file="),
    (["model_file=runs/last.ckpt", "dataset=mnist"], "error: runs/last.ckpt is a train.py checkpoint: give it as ckpt="),
])
def test_bad_input_is_one_sentence(args, expected):
    # certify.py's main is run_certification inside user_errors (tests/test_validation.py runs the script)
    with pytest.raises(SystemExit) as exit_info, user_errors():
        run_certification(compose_config("certify", args))
    assert exit_info.value.code.startswith(expected) and "\n" not in exit_info.value.code
