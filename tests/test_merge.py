"""``python -m mmru.certification.merge``: shards become the single run's row; mixed shards are refused."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from mmru.certification.merge import main
from mmru.certification.records import load_records
from mmru.certification.runner import run_certification
from mmru.training import compose_config, compose_train_config, train

# deterministic stages only (no attack, no MIP), a tiny MLP: the shards must reproduce the single run
FAST = ["n_points=8", "batch_size=4", "attack=none", "mip=false", "wandb.enabled=false", "progress=false"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained checkpoint (with a validation split), and a second one with other weights."""
    out = tmp_path_factory.mktemp("train")
    cfg = compose_train_config(["logger=none", "model=mlp", "model.widths=[32]", "datamodule.limit_train=1024",
                                "datamodule.limit_test=64", "dataset.val_fraction=0.1", "batch_size=32", "lr=0.005",
                                "trainer.max_epochs=1",
                                "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], out)
    first = train(cfg)["checkpoint"]
    ckpt = torch.load(first, weights_only=True)
    ckpt["state_dict"] = {k: v + 0.01 for k, v in ckpt["state_dict"].items()}
    other = out / "other" / "checkpoints" / "other.ckpt"
    other.parent.mkdir(parents=True)
    torch.save(ckpt, other)
    return first, str(other)


@pytest.fixture(scope="module")
def shard0(checkpoints, tmp_path_factory):
    """Shard 0 of 2 of the first checkpoint at the run's own radii."""
    return shard(checkpoints[0], tmp_path_factory.mktemp("shard0"), 0)


def certify(checkpoint, out_dir, *overrides):
    return run_certification(compose_config("certify", [f"ckpt={checkpoint}", f"out_dir={out_dir}", *FAST,
                                                        *overrides]))


def shard(checkpoint, out_dir, i, *overrides):
    certify(checkpoint, out_dir, f"shard={i}", "num_shards=2", *overrides)
    return str(out_dir)


def outcome(record):
    """A record without its timing."""
    return {k: v for k, v in vars(record).items() if k != "seconds"}


def test_merged_shards_are_the_single_run(checkpoints, shard0, tmp_path, capsys):
    ckpt = checkpoints[0]
    single = certify(ckpt, tmp_path / "single")
    shards = [shard(ckpt, tmp_path / "s1", 1), shard0]  # in any order
    capsys.readouterr()
    main([*shards, "--out", str(tmp_path / "merged")])
    assert "robust test error (%) on 8 test points" in capsys.readouterr().out  # the Table-1 row is printed
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    for key in ("l1", "l2", "linf", "worst_case_ub", "n_points", "test_error", "curves", "universal_curve"):
        assert merged[key] == single[key], key
    assert (merged["num_shards"], merged["merged_from"]) == (1, shards)
    records = load_records(tmp_path / "merged" / "points.jsonl")
    assert [(r.index, r.norm) for r in records] == [(i, n) for i in range(8) for n in ("l1", "l2", "linf")]
    expected = sorted(load_records(tmp_path / "single" / "points.jsonl"), key=lambda r: (r.index, r.norm))
    assert [outcome(r) for r in records] == [outcome(r) for r in expected]
    assert {r.status for r in records} == {"certified", "attacked", "undecided"}  # a row worth comparing


def test_shards_of_different_checkpoints_are_refused_in_one_sentence(checkpoints, shard0, tmp_path):
    shards = [shard0, shard(checkpoints[1], tmp_path / "s1", 1)]
    proc = subprocess.run([sys.executable, "-m", "mmru.certification.merge", *shards, "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: the shards come from different checkpoints or radii"]
    assert not (tmp_path / "m").exists()  # refused before writing anything


@pytest.mark.parametrize("norm,eps", [("l1", 0.5), ("linf", 0.05)])
def test_shards_at_different_radii_are_refused(checkpoints, shard0, tmp_path, norm, eps):
    shards = [shard0, shard(checkpoints[0], tmp_path / "s1", 1, f"eps.{norm}={eps}")]
    with pytest.raises(SystemExit) as refused:
        main([*shards, "--out", str(tmp_path / "m")])
    assert str(refused.value.code) == "error: the shards come from different checkpoints or radii"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("other", [["norms=[l1,linf]"], ["split=val"]])
def test_shards_of_other_norms_or_splits_are_refused(checkpoints, shard0, tmp_path, other):
    shards = [shard0, shard(checkpoints[0], tmp_path / "s1", 1, *other)]
    with pytest.raises(SystemExit) as refused:
        main([*shards, "--out", str(tmp_path / "m")])
    assert str(refused.value.code) == "error: the shards certify different norms or splits"
    assert not (tmp_path / "m").exists()
