"""certify.py end to end: outputs, resume, shards, and bad input."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from mmru.certification.merge import merge_shards
from mmru.certification.records import load_records
from mmru.certification.runner import run_certification, shard_indices
from mmru.training import compose_config, compose_train_config, train

FAST = ["n_points=12", "batch_size=6", "attack=fast", "mip=false", "wandb.enabled=false", "progress=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = compose_train_config(["logger=none", "datamodule.limit_train=512", "trainer.max_epochs=1",
                                "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], out)
    return train(cfg)["checkpoint"]


def certify(checkpoint, out_dir, *overrides):
    return run_certification(compose_config("certify", [f"ckpt={checkpoint}", f"out_dir={out_dir}", *FAST,
                                                        *overrides]))


def test_summary_and_points_are_written(checkpoint, tmp_path):
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


def test_killed_run_resumes_without_losing_or_duplicating(checkpoint, tmp_path):
    certify(checkpoint, tmp_path, "n_points=6")
    lines = (tmp_path / "points.jsonl").read_text().splitlines()
    # Simulate a kill in the middle of writing the second batch.
    (tmp_path / "points.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:25])
    certify(checkpoint, tmp_path)
    records = load_records(tmp_path / "points.jsonl")
    keys = [(r.index, r.norm) for r in records]
    assert len(keys) == len(set(keys)) == 36
    assert {i for i, _ in keys} == set(range(12))


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
    certify(checkpoint, tmp_path, "n_points=6")
    with pytest.raises(Exception, match="eps"):
        certify(checkpoint, tmp_path, "n_points=6", "eps.linf=0.05")


@pytest.mark.parametrize("args,expected", [
    (["ckpt=/nonexistent.ckpt"], "does not exist"),
    ([], "give the checkpoint"),
])
def test_bad_input_is_one_sentence(args, expected, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "certify.py"), *args, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and expected in last and "Traceback" not in proc.stderr
