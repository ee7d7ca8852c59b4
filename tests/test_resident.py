"""The GPU training path on the CPU: resident batches, the deferred NaN/inf guard, compile's plumbing.

``torch.compile`` itself is not run here: compiling MMR-Universal's step took 80 s on a
14x14 conv net on this CI's CPU (inductor; 17 s with the aot_eager backend), past the suite's
budget. ``make bench`` checks compiled against eager losses and gradients on the device it runs on.
"""

import math

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from mmru.cli import user_errors
from mmru.data import RobustDataModule
from mmru.data.datamodule import EpochSeededSampler
from mmru.data.resident import ResidentBatches, stack_dataset
from mmru.errors import ConfigError
from mmru.finite_guard import FiniteGuard
from mmru.training import compose_train_config, train

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
SMALL = [*QUIET, "model=mlp", "model.widths=[16]", "datamodule.limit_train=128", "datamodule.limit_test=32",
         "batch_size=64"]


def test_resident_batches_are_the_dataloaders_batches_epoch_by_epoch(one_thread):
    dm = RobustDataModule("mnist5k", "unused", (1, 28, 28), 10, batch_size=48, seed=7, limit_train=200)
    dm.setup("fit")
    loader = dm.train_dataloader()  # DataLoader over EpochSeededSampler
    x, y = stack_dataset(dm.train_set)
    resident = ResidentBatches(x, y, 48, EpochSeededSampler(len(x), 7))
    assert len(resident) == len(loader) == 5  # 4 full batches and one of 8
    firsts = []
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        resident.sampler.set_epoch(epoch)
        pairs = list(zip(loader, resident, strict=True))
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        firsts.append(pairs[0][1][0])
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])  # reshuffled


def test_resident_training_repeats_the_dataloader_training(tmp_path, monkeypatch, one_thread):
    """Same batches, so the same loss trajectory: equal epoch losses and bit-equal weights.

    The resident run also asks for torch.compile, here an identity that records its call: the
    scheme's training loss is wrapped once, with the mode asked for.
    """
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode: calls.append((fn, mode)) or fn)
    runs = {}
    for resident in (False, True):
        speed = ["trainer.resident_data=true", "trainer.compile=true", "trainer.compile_mode=reduce-overhead"]
        cfg = compose_train_config([*SMALL, "regularizer=universal", "trainer.max_epochs=2",
                                    *(speed if resident else [])], tmp_path / str(resident))
        metrics = train(cfg)
        runs[resident] = metrics, torch.load(metrics["checkpoint"], weights_only=True)["state_dict"]
    (m_loader, w_loader), (m_resident, w_resident) = runs[False], runs[True]
    for key in ("train/loss", "train/penalty", "test/error"):
        assert m_resident[key] == m_loader[key], key
    for name, value in w_loader.items():
        torch.testing.assert_close(w_resident[name], value, rtol=0, atol=0, msg=name)
    assert len(calls) == 1
    fn, mode = calls[0]
    assert mode == "reduce-overhead" and fn.__func__.__qualname__ == "Regularizer.training_loss"
    assert type(fn.__self__).__name__ == "MMRUniversal"


# --- the NaN/inf guard, read every N steps --------------------------------------------------------------

def test_finite_guard_keeps_the_first_bad_step_and_its_loss():
    guard = FiniteGuard(every_n_steps=4)
    grads = [torch.ones(3)]
    guard.record(torch.tensor(1.0), grads, 0)
    assert guard.first_bad() is None
    guard.record(torch.tensor(2.0), [torch.tensor([1.0, math.inf, 0.0])], 1)
    guard.record(torch.tensor(math.nan), grads, 2)
    step, loss = guard.first_bad()
    assert step == 1 and loss.item() == 2.0  # the gradient went bad first; the later NaN loss does not win
    assert [guard.due(s, last_of_epoch=False) for s in range(8)] == [False, False, False, True] * 2
    assert guard.due(1, last_of_epoch=True)


def test_deferred_guard_reads_every_n_steps_and_names_the_first_bad_step(tmp_path, monkeypatch, one_thread):
    reads = []
    first_bad = FiniteGuard.first_bad
    monkeypatch.setattr(FiniteGuard, "first_bad", lambda self: reads.append(1) or first_bad(self))
    cfg = compose_train_config([*SMALL, "datamodule.limit_train=64", "batch_size=16", "trainer.max_epochs=3",
                                "trainer.check_finite_every_n_steps=3",
                                "regularizer._target_=test_validation.PoisonedLoss", "+regularizer.bad_step=1"],
                               tmp_path)
    with pytest.raises(SystemExit) as exit_info, user_errors():
        train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    # 4 steps per epoch; read after global steps 2 (every 3rd), 3 (epoch's end) and 5 (every 3rd), where it
    # stops: the per-step guard would have read 5 times. The sentence is the per-step guard's own.
    assert len(reads) == 3
    assert exit_info.value.code == ("error: training diverged: the loss became nan at epoch 1, step 0 of the epoch "
                                    f"(global step 4); the last good checkpoint is {last}.")
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


# --- the options' refusals -----------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("trainer.compile=maybe", "trainer.compile must be true or false, got 'maybe'."),
    ("trainer.compile_mode=fast", "trainer.compile_mode must be one of default, reduce-overhead, max-autotune, "
                                  "max-autotune-no-cudagraphs, got 'fast'."),
    ("trainer.check_finite_every_n_steps=0", "trainer.check_finite_every_n_steps must be an integer >= 1, got 0."),
    ("trainer.resident_data=1", "trainer.resident_data must be true or false, got 1."),
])
def test_bad_speed_options_are_one_sentence_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        train(compose_train_config([*QUIET, override], tmp_path))
    assert str(err.value) == message
    assert list(tmp_path.iterdir()) == []


def test_resident_data_refuses_augmentation_and_ddp(tmp_path):
    cfg = compose_train_config([*QUIET, "trainer.resident_data=true", "dataset.augment=true"], tmp_path)
    with pytest.raises(ConfigError, match="cannot serve dataset.augment=true"):
        train(cfg)
    cfg = compose_train_config([*QUIET, "trainer=ddp", "trainer.accelerator=cpu", "trainer.resident_data=true"],
                               tmp_path)
    with pytest.raises(ConfigError, match="serves one device"):
        train(cfg)
    assert list(tmp_path.iterdir()) == []


def test_gpu_trainer_turns_the_sync_free_path_on(tmp_path):
    trainer = compose_train_config(["logger=none", "trainer=gpu"], tmp_path).trainer
    assert trainer.resident_data and trainer.check_finite_every_n_steps > 1
    assert trainer.log_every_n_steps == trainer.check_finite_every_n_steps
    cpu = compose_train_config(["logger=none"], tmp_path).trainer
    assert not cpu.resident_data and not cpu.compile and cpu.check_finite_every_n_steps == 1


# --- on a GPU only: no step between two host reads waits for the GPU ----------------------------------

class SyncTrap(L.Callback):
    """CUDA's sync debug mode set to 'error' during every step at which nothing is due on the host:
    not the first (allocations), not one where the NaN/inf guard or the per-step log is read."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        due = (batch_idx == 0 or pl_module.finite_guard.due(step, batch_idx + 1 >= trainer.num_training_batches)
               or (step + 1) % trainer.log_every_n_steps == 0)
        torch.cuda.set_sync_debug_mode(0 if due else "error")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_steps_between_host_reads_do_not_synchronise(tmp_path):
    cfg = compose_train_config([*QUIET, "trainer=gpu", "regularizer=universal", "datamodule.limit_train=1280",
                                "datamodule.limit_test=128", "trainer.max_epochs=1"], tmp_path)
    with open_dict(cfg):
        cfg.callbacks.sync_trap = {"_target_": f"{__name__}.SyncTrap"}
    try:
        train(cfg)  # 10 steps; a synchronisation inside steps 1-8 raises
    finally:
        torch.cuda.set_sync_debug_mode(0)
