"""Recipe facts for reports: training seconds across resumed segments, commit, hardware."""

import re

from mmru.models import mlp
from mmru.module import RobustClassifier
from mmru.provenance import commit, hardware


def test_train_seconds_add_up_over_resumed_segments(monkeypatch):
    clock = iter([100.0, 130.0, 500.0, 510.0])
    monkeypatch.setattr("mmru.module.time.perf_counter", lambda: next(clock))
    first = RobustClassifier(mlp((1, 2, 2), 3, [4]))
    first.on_fit_start()  # t = 100
    saved: dict = {}
    first.on_save_checkpoint(saved)  # t = 130
    assert saved["train_seconds"] == 30.0
    resumed = RobustClassifier(mlp((1, 2, 2), 3, [4]))
    resumed.on_load_checkpoint(saved)
    resumed.on_fit_start()  # t = 500
    again: dict = {}
    resumed.on_save_checkpoint(again)  # t = 510
    assert again["train_seconds"] == 40.0


def test_commit_and_hardware_are_named():
    sha = commit()
    assert sha is None or re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", sha)
    assert "CPU" in hardware("cpu")
