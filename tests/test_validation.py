"""Bad input: one sentence and exit 1 before any work; a diverging training stops cleanly."""

import copy
import inspect
import math
import subprocess
import sys

import hydra
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import ROOT
from mmru.certification.records import load_records
from mmru.certification.runner import run_certification
from mmru.cli import user_errors
from mmru.models import mlp
from mmru.module import RobustClassifier
from mmru.regularizers.base import Regularizer
from mmru.training import compose_config, compose_train_config, train, validate_config
from mmru.validation import (
    ATTACK_STRENGTHS,
    BOUND_METHODS,
    NORM_NAMES,
    REGULARIZER_OPTIONS,
    validate_regularizer,
)

SCHEMES = sorted(p.stem for p in (ROOT / "conf" / "regularizer").glob("*.yaml"))
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def base_config():
    return compose_train_config(QUIET, "unused")


def train_config(base, output_dir, scheme="none", **values):
    """``base`` with conf/regularizer/<scheme>.yaml and ``values`` (dotted keys with '__' for '.').

    What Hydra's compose would give for ``regularizer=<scheme> key=value``, without its
    half-second per composition: a group config lands under its key and resolves from the root.
    """
    cfg = copy.deepcopy(base)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.regularizer = OmegaConf.load(ROOT / "conf" / "regularizer" / f"{scheme}.yaml")
        cfg.regularizer_name = scheme
        for key, value in values.items():
            OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def user_error_of(fn, *args) -> str:
    """What the entry points print for ``fn(*args)``: its one line, which must start with 'error:'."""
    with pytest.raises(SystemExit) as exit_info, user_errors():
        fn(*args)
    message = exit_info.value.code
    # SystemExit with a string exits with status 1 and prints that string
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


# --- the tables ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_has_a_table_of_exactly_its_constructor_options(base_config, scheme):
    cfg = train_config(base_config, "unused", scheme)
    options = OmegaConf.to_container(cfg.regularizer, resolve=True)
    table = REGULARIZER_OPTIONS[options["_target_"]]
    cls = hydra.utils.get_class(options["_target_"])
    params = [n for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert set(table) == set(params)
    validate_config(cfg)  # the shipped values are valid


def test_option_names_match_the_code():
    from mmru.certification.cascade import NORMS
    from mmru.verify import METHODS

    assert BOUND_METHODS == METHODS and NORM_NAMES == tuple(NORMS)
    assert ATTACK_STRENGTHS == ("none", "fast", "strong")


def test_unknown_option_of_a_scheme_is_named():
    with pytest.raises(ValueError, match=r"regularizer.gamma is not an option of MMRUniversal \(its options: lambda_1"):
        validate_regularizer({"_target_": "mmru.regularizers.universal.MMRUniversal", "gamma": 1.0})


# --- train.py -----------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("scheme,values,message", [
    # the three the issue found accepted
    ("universal", {"regularizer.gamma_1": -1}, "regularizer.gamma_1 must be a positive finite number, got -1."),
    ("universal", {"regularizer.k_b_start": 1.5}, "regularizer.k_b_start must be a fraction in (0, 1], got 1.5."),
    ("universal", {"regularizer.lambda_1": NAN}, "regularizer.lambda_1 must be a finite number >= 0, got nan."),
    ("universal", {"regularizer.weighting": "both"}, "regularizer.weighting must be one of per_norm, per_term"),
    ("universal", {"regularizer.foo": 1}, "regularizer.foo is not an option of MMRUniversal"),
    ("mmr_linf", {"regularizer.k_d": 0}, "regularizer.k_d must be an integer >= 1 or null, got 0."),
    ("mmr_l2", {"regularizer.gamma_d": INF}, "regularizer.gamma_d must be a positive finite number, got inf."),
    ("mmr_l2", {"regularizer.k_b_end": 0.0}, "regularizer.k_b_end must be a fraction in (0, 1], got 0.0."),
    ("mmr_at_l2", {"regularizer.adv_fraction": 1.0}, "regularizer.adv_fraction must be a number in [0, 1), got 1.0."),
    ("at_linf", {"regularizer.p": 3}, "regularizer.p must be 1, 2 or inf, got 3."),
    ("at_l2", {"regularizer.steps": 2.5}, "regularizer.steps must be an integer >= 1, got 2.5."),
    ("at_l2", {"regularizer.step_size": -0.1}, "regularizer.step_size must be a positive finite number or null"),
    ("at_union", {"regularizer.eps.l2": -0.3}, "regularizer.eps must be a positive finite radius for each of l1, l2"),
    ("kw_linf", {"regularizer.method": "deeppoly"}, "regularizer.method must be one of ibp, kw, crown"),
    ("kw_l2", {"regularizer.eps_warmup_epochs": -1}, "regularizer.eps_warmup_epochs must be an integer >= 0"),
    ("none", {"lr": 0.0}, "lr must be a positive finite number, got 0.0."),
    ("none", {"batch_size": 0}, "batch_size must be an integer >= 1, got 0."),
    ("none", {"seed": -3}, "seed must be an integer >= 0, got -3."),
    ("none", {"dataset.eps.linf": NAN}, "dataset.eps.linf must be a positive finite number, got nan."),
    ("none", {"dataset.val_fraction": 1.0}, "dataset.val_fraction must be a number in [0, 1), got 1.0."),
    ("none", {"trainer.max_epochs": 0}, "trainer.max_epochs must be an integer >= 1, got 0."),
    ("none", {"trainer.limit_train_batches": 1.5}, "trainer.limit_train_batches must be an integer >= 0 or a fraction"),
    ("none", {"datamodule.limit_train": 0}, "datamodule.limit_train must be an integer >= 1 or null, got 0."),
    ("none", {"certify_after_training": True, "certify_overrides": ["attack=nosuch"]},
     "certify_overrides: attack must be one of none, fast, strong, got 'nosuch'."),
    ("none", {"certify_after_training": True, "certify_overrides": ["split=val"]}, "needs dataset.val_fraction > 0"),
    ("none", {"certify_after_training": True, "certify_overrides": ["nosuch=1"]},
     "certify_overrides cannot be applied"),
])
def test_bad_training_option_stops_before_any_work(base_config, scheme, values, message, tmp_path):
    cfg = train_config(base_config, tmp_path, scheme, **values)
    assert message in user_error_of(train, cfg)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no log: nothing ran


def test_train_py_says_one_sentence_and_exits_1(tmp_path):
    """The real entry point, once: Hydra, train.py's main, the exit status."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "logger=none", "regularizer=universal",
                           "regularizer.lambda_1=nan", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: regularizer.lambda_1 must be a finite number >= 0, got nan."]
    assert not (tmp_path / "checkpoints").exists()


# --- a diverging training -----------------------------------------------------------------------------

class PoisonedLoss(Regularizer):
    """Plain training whose loss turns NaN at step ``bad_step`` (batch bad_step - 1) of the second
    epoch (also used by tests/test_resident.py)."""

    def __init__(self, bad_step: int = 3):
        super().__init__()
        self.bad_step = bad_step

    def on_epoch_start(self, epoch, max_epochs):
        self.epoch, self.steps = epoch, 0
        return {}

    def training_loss(self, net, x, y):
        out = super().training_loss(net, x, y)
        self.steps += 1
        if (self.epoch, self.steps) == (1, self.bad_step):
            out.loss = out.loss * math.nan
        return out


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = compose_train_config([*QUIET, "model=mlp", "model.widths=[16]", "datamodule.limit_train=64", "batch_size=16",
                                "trainer.max_epochs=3", f"regularizer._target_={__name__}.PoisonedLoss"], tmp_path)
    message = user_error_of(train, cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert message == ("error: training diverged: the loss became nan at epoch 1, step 2 of the epoch (global step 6); "
                       f"the last good checkpoint is {last}.")
    saved = torch.load(last, weights_only=True)
    # the state at the end of epoch 0 (4 steps), not the diverged one of epoch 1
    assert saved["epoch"] == 0 and saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


# --- certify.py ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    """An untrained small MNIST checkpoint and an output directory holding complete records for it."""
    root = tmp_path_factory.mktemp("certify")
    torch.manual_seed(0)
    recipe = {"_target_": "mmru.models.mlp", "input_shape": [1, 28, 28], "num_classes": 10, "widths": [8]}
    module = RobustClassifier(mlp((1, 28, 28), 10, (8,)), net_config=recipe, run_config={
        "dataset": "mnist5k", "eps": {"l1": 1.0, "l2": 0.3, "linf": 0.1}, "seed": 0, "val_fraction": 0.0})
    ckpt = root / "a.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    out = root / "out"
    run_certification(compose_config("certify", [f"ckpt={ckpt}", f"out_dir={out}", *CHEAP]))
    return ckpt, out


CHEAP = ["n_points=4", "attack=none", "mip=false", "bounds=[]", "wandb.enabled=false", "progress=false"]


@pytest.mark.parametrize("overrides,message", [
    (["mip_time_limit=-1"], "mip_time_limit must be a positive finite number, got -1."),
    (["attack=nosuch"], "attack must be one of none, fast, strong, got 'nosuch'."),
    (["bounds=[nosuch]"], "bounds must be a list of distinct names from ibp, kw, crown, got ['nosuch']."),
    (["norms=[l3]"], "norms must be a non-empty list of distinct names from l1, l2, linf"),
    (["norms=[]"], "norms must be a non-empty list"),
    (["eps.linf=nan"], "eps.linf must be a positive finite number or null, got nan."),
    (["n_points=0"], "n_points must be an integer >= 1"),
    (["batch_size=1.5"], "batch_size must be an integer >= 1"),
    (["split=train"], "split must be one of test, val"),
    (["shard=2", "num_shards=2"], "shard must lie in [0, num_shards)"),
    (["mip=maybe"], "mip must be true or false"),
    (["mip_workers=0"], "mip_workers must be an integer >= 1"),
    (["device=gpu"], "device must be cpu, cuda, cuda:<index> or auto, got 'gpu'."),
    *([] if torch.cuda.is_available() else
      [(["device=cuda"], "device=cuda asks for a GPU, but torch sees no CUDA device here")]),
    (["dataset=cifar10"], "dataset=cifar10 has inputs of shape [3, 32, 32] in 10 classes, but the checkpoint's net "
                          "takes [1, 28, 28] in 10: the shapes do not match"),
])
def test_bad_certify_option_stops_before_resuming(certified, overrides, message, capsys):
    """The output directory already holds every record: the options must be checked before resuming."""
    ckpt, out = certified
    def files():  # contents and modification times: even a rewrite with the same bytes shows
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}

    before = files()
    got = user_error_of(run_certification, compose_config("certify", [f"ckpt={ckpt}", f"out_dir={out}", *CHEAP,
                                                                       *overrides]))
    assert message in got
    assert files() == before
    assert "resumed" not in capsys.readouterr().out


def test_certify_py_says_one_sentence_and_exits_1(certified, tmp_path):
    """The real entry point, once, with records to resume in the output directory."""
    ckpt, out = certified
    before = (out / "points.jsonl").read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "certify.py"), f"ckpt={ckpt}", f"out_dir={out}", *CHEAP,
                           "attack=nosuch", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: attack must be one of none, fast, strong, got 'nosuch'."]
    assert (out / "points.jsonl").read_bytes() == before and len(load_records(out / "points.jsonl")) == 12
