"""``python -m mmru.report``: Table 1 from fake finished runs, beside the published figures."""

import csv
import json
import os
import time

import pytest

from mmru.paper_table1 import EPS, NORMS, SCHEME_LABELS, TABLE1
from mmru.report import ReportError, build_rows, drop_duplicates, find_summaries, load_runs, main
from wandb_log import offline_history

MNIST_EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}


def write_summary(directory, dataset, regularizer, seed, te, lb, ub, eps=MNIST_EPS, **extra):
    """A summary.json as certify.py writes it (fractions in [0, 1])."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = {
        "test_error": te, "worst_case_ub": max(ub), "n_points": 100, "split": "test",
        "run": {"dataset": dataset, "regularizer": regularizer, "checkpoint": str(directory / "best.ckpt"),
                "seed": seed},
        **{n: {"eps": eps[n], "lb": lo, "ub": hi} for n, lo, hi in zip(NORMS, lb, ub)},
        **extra,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory / "summary.json"


def two_runs(root):
    write_summary(root / "run_a" / "certify", "mnist", "universal", 0, 0.031, (0.05, 0.06, 0.125),
                  (0.2, 0.1, 0.125), selected_on="val")
    write_summary(root / "run_b" / "certify", "mnist5k", "none", 0, 0.08, (0.02, 0.03, 0.7), (1.0, 1.0, 1.0))


def read_csv(path):
    with path.open() as fh:
        return {(r["dataset"], r["scheme"]): r for r in csv.DictReader(fh)}


def test_paper_table_is_complete_and_consistent():
    assert set(TABLE1) == set(EPS) == {"mnist", "fmnist", "gts", "cifar10"}
    for dataset, rows in TABLE1.items():
        assert list(rows) == list(SCHEME_LABELS)
        for scheme, row in rows.items():
            ubs = [row.bounds(n)[1] for n in NORMS]
            assert row.worst_ub == max(ubs), (dataset, scheme)  # the paper's definition of the last column
            assert all(row.bounds(n)[0] <= row.bounds(n)[1] for n in NORMS), (dataset, scheme)
            assert row.te <= min(row.bounds(n)[0] for n in NORMS), (dataset, scheme)
    assert TABLE1["mnist"]["universal"].worst_ub == 20.8 and TABLE1["cifar10"]["none"].te == 23.29


def test_report_from_two_runs_writes_the_table(tmp_path, capsys):
    two_runs(tmp_path / "logs")
    main([str(tmp_path / "logs"), "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "table1.csv")
    assert list(rows) == [("mnist", "universal"), ("mnist5k", "none")]  # paper order of datasets
    universal, plain = rows[("mnist", "universal")], rows[("mnist5k", "none")]
    assert universal["model"] == "MMR-Universal" and universal["selected_on"] == "val"
    assert universal["te"] == "3.10" and universal["te_paper"] == "3.04"
    assert (universal["l1_ub"], universal["l1_ub_paper"]) == ("20.00", "20.80")
    assert (universal["linf_lb"], universal["linf_lb_paper"]) == ("12.50", "12.40")
    assert (universal["worst_ub"], universal["worst_ub_paper"]) == ("20.00", "20.80")
    # mnist5k is compared with MNIST's published row, and says so
    assert plain["model"] == "plain" and plain["paper_dataset"] == "mnist"
    assert (plain["te"], plain["te_paper"], plain["linf_lb_paper"]) == ("8.00", "0.85", "73.90")
    assert plain["runs"] == str(tmp_path / "logs" / "run_b" / "certify")
    out = capsys.readouterr().out
    assert "MMR-Universal" in out and "3.10 (3.04)" in out and "paper figures: MNIST" in out


def test_seeds_are_averaged(tmp_path):
    for seed, te in [(0, 0.02), (1, 0.04)]:
        write_summary(tmp_path / f"s{seed}", "mnist", "universal", seed, te, (0.1, 0.1, 0.1), (0.2, 0.2, 0.2))
    [row] = build_rows(load_runs(find_summaries([str(tmp_path)]))[0])
    assert row.seeds == "0,1" and row.ours["te"] == pytest.approx(3.0)


def test_a_published_network_has_its_own_row_beside_the_papers(tmp_path):
    """Never averaged with our own runs of the scheme; compared with the same paper row; named so."""
    write_summary(tmp_path / "ours", "mnist", "universal", 0, 0.07, (0.1, 0.1, 0.2), (0.2, 0.2, 0.25))
    source = "Croce & Hein 2020, github.com/fra31/mmr-universal@3eba567, mmr_univ_mnist.mat"
    write_summary(tmp_path / "published", "mnist", "universal", None, 0.0304, (0.06, 0.06, 0.124),
                  (0.15, 0.09, 0.13), recipe={"epochs": 100, "mip": True, "mip_time_limit": 120.0, "source": source})
    main([str(tmp_path), "--out", str(tmp_path / "out"), "--name", "table"])
    rows = read_csv(tmp_path / "out" / "table.csv")
    assert list(rows) == [("mnist", "universal"), ("mnist", "universal@published")]
    published = rows[("mnist", "universal@published")]
    assert published["model"] == "MMR-Universal (published)" and published["te"] == "3.04"
    assert (published["linf_ub"], published["linf_ub_paper"]) == ("13.00", "12.40")
    assert published["recipe"].startswith("SHORTENED (100 of 1000 points): published network (" + source + ")")
    assert rows[("mnist", "universal")]["te"] == "7.00"
    assert "MMR-Universal (published)" in (tmp_path / "out" / "table.md").read_text()


def test_a_fine_tune_is_its_own_row_compared_with_the_network_it_started_from(tmp_path):
    """A fine-tune of a published network (its run's init_from has that file's md5) is compared with the
    published network's paper row, whatever scheme fine-tuned it, and named so; a fine-tune of another
    file has no paper figures; neither is averaged with runs of its scheme trained from scratch."""
    write_summary(tmp_path / "scratch", "mnist", "at_linf", 0, 0.01, (0.1,) * 3, (0.9,) * 3)
    for name, md5 in (("from_published", "ebe49345c826ff3b7234100b6b008ab2"), ("from_other", "0" * 32)):
        path = write_summary(tmp_path / name, "mnist", "at_linf", 0, 0.0252, (0.053, 0.048, 0.117),
                             (0.053, 0.053, 0.117))
        summary = json.loads(path.read_text())
        summary["run"]["init_from"] = {"path": f"/somewhere/{name}.mat", "md5": md5}
        path.write_text(json.dumps(summary))
    main([str(tmp_path), "--out", str(tmp_path / "out"), "--name", "table"])
    rows = read_csv(tmp_path / "out" / "table.csv")
    assert set(rows) == {("mnist", "at_linf"), ("mnist", "at_linf@from:universal@published"),
                         ("mnist", "at_linf@from:from_other.mat")}
    tuned = rows[("mnist", "at_linf@from:universal@published")]
    assert tuned["model"] == "AT-l∞, fine-tuned from MMR-Universal (published)"
    assert (tuned["te"], tuned["te_paper"], tuned["linf_ub_paper"]) == ("2.52", "3.04", "12.40")
    other = rows[("mnist", "at_linf@from:from_other.mat")]
    assert other["model"] == "AT-l∞, fine-tuned from from_other.mat" and other["te_paper"] == ""
    assert rows[("mnist", "at_linf")]["te_paper"] == "0.82"  # AT-l∞ from scratch: the paper's AT-l∞ row


def test_duplicate_runs_are_refused_or_the_newest_kept(tmp_path, capsys):
    old = write_summary(tmp_path / "old", "mnist", "universal", 0, 0.05, (0.1,) * 3, (0.2,) * 3)
    new = write_summary(tmp_path / "new", "mnist", "universal", 0, 0.03, (0.1,) * 3, (0.2,) * 3)
    os.utime(old, (time.time() - 60, time.time() - 60))
    with pytest.raises(SystemExit, match="2 runs of mnist / universal / seed 0"):
        main([str(tmp_path), "--out", str(tmp_path / "out")])
    runs, notes = drop_duplicates(load_runs(find_summaries([str(tmp_path)]))[0], keep_latest=True)
    assert [r.path for r in runs] == [new] and "kept the newest" in notes[0]
    main([str(tmp_path), "--out", str(tmp_path / "out"), "--keep-latest"])
    assert read_csv(tmp_path / "out" / "table1.csv")[("mnist", "universal")]["te"] == "3.00"
    with pytest.raises(ReportError):
        drop_duplicates(load_runs([old, new])[0], keep_latest=False)


def test_shards_other_splits_and_other_eps_are_not_mixed_in(tmp_path):
    write_summary(tmp_path / "r" / "certify" / "shard0of2", "mnist", "universal", 0, 0.03, (0.1,) * 3, (0.2,) * 3,
                  shard=0, num_shards=2)
    write_summary(tmp_path / "r" / "certify-val", "mnist", "universal", 0, 0.03, (0.1,) * 3, (0.2,) * 3, split="val")
    write_summary(tmp_path / "q" / "certify", "mnist", "at_l2", 0, 0.01, (0.1,) * 3, (1.0,) * 3,
                  eps={**MNIST_EPS, "l2": 0.5})
    runs, notes = load_runs(find_summaries([str(tmp_path / "*")]))
    assert [r.scheme for r in runs] == ["at_l2"] and len(notes) == 2
    assert any("merge" in n for n in notes) and any("split 'val'" in n for n in notes)
    [row] = build_rows(runs)
    # radii other than the paper's: those columns (and the worst case) have no paper figure
    assert row.paper["l2_ub"] is None and row.paper["worst_ub"] is None and row.paper["l1_ub"] == 100
    assert "l2 eps 0.5" in row.notes[0]


def test_merged_shards_count_once(tmp_path):
    shards = [write_summary(tmp_path / "certify" / f"shard{i}of2", "mnist", "universal", 0, 0.03, (0.1,) * 3,
                            (0.2,) * 3, shard=i, num_shards=2).parent for i in (0, 1)]
    write_summary(tmp_path / "certify", "mnist", "universal", 0, 0.03, (0.1,) * 3, (0.2,) * 3,
                  merged_from=[str(d) for d in shards])
    runs, notes = load_runs(find_summaries([str(tmp_path)]))
    assert [r.path for r in runs] == [tmp_path / "certify" / "summary.json"] and not notes


def test_missing_input_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="nothing matches"):
        main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no test-split certification"):
        main([str(tmp_path)])
    (tmp_path / "summary.json").write_text('{"test_error": 0.1,')  # a run still writing it
    with pytest.raises(SystemExit, match="cannot read"):
        main([str(tmp_path)])


def test_wandb_table_is_logged_offline(tmp_path):
    two_runs(tmp_path / "logs")
    main([str(tmp_path / "logs"), "--out", str(tmp_path / "out"), "--wandb"])
    [run] = (tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb")
    history = offline_history(run)
    assert history["table1/nrows"] == ["2"]
    [table] = run.parent.glob("files/media/table/table1_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:4] == ["dataset", "paper_dataset", "scheme", "model"]
    assert [r[3] for r in data["data"]] == ["MMR-Universal", "plain"]
    assert b"report" in run.read_bytes()  # the job type
