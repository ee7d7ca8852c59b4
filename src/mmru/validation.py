"""Which values every option accepts, as tables: checked before a run does any work.

One table per training scheme (keyed by the ``_target_`` of ``conf/regularizer/*.yaml``), one for
the trainer (``conf/config.yaml`` and its groups) and one for ``conf/certify.yaml``. A value
outside its range raises :class:`~mmru.errors.ConfigError` with one sentence naming the option,
e.g. ``regularizer.gamma_1 must be a positive finite number, got -1.`` Comparisons are written so
that NaN fails every one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmru.errors import ConfigError

#: the bound-propagation methods (mmru.verify.METHODS), the attack strengths of the cascade and
#: the norms by their config names (its NORMS); literal here so that checking options imports
#: neither torch nor the solvers (a test keeps them equal)
BOUND_METHODS = ("ibp", "kw", "crown")
ATTACK_STRENGTHS = ("none", "fast", "strong")
NORM_NAMES = ("l1", "l2", "linf")


@dataclass(frozen=True)
class Check:
    """One option's valid values: ``what`` says them in words, ``accepts`` tests a value."""

    what: str
    accepts: Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _norm_index(v: Any) -> float:
    """1, 2, 2.0, inf, 'inf' -> float; anything else -> NaN (which no range accepts)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return math.nan
    try:
        return float(v)
    except ValueError:
        return math.nan


def _cuda_index(v: str) -> bool:
    return v.startswith("cuda:") and v[5:].isdigit()


def optional(check: Check) -> Check:
    return Check(f"{check.what} or null", lambda v: v is None or check.accepts(v))


def one_of(*options: str) -> Check:
    return Check("one of " + ", ".join(options), lambda v: isinstance(v, str) and v in options)


def list_of(options: tuple[str, ...], nonempty: bool) -> Check:
    what = f"a {'non-empty ' if nonempty else ''}list of distinct names from " + ", ".join(options)

    def accepts(v: Any) -> bool:
        return (isinstance(v, list) and (bool(v) or not nonempty) and len(set(map(str, v))) == len(v)
                and all(isinstance(x, str) and x in options for x in v))

    return Check(what, accepts)


POSITIVE = Check("a positive finite number", lambda v: _number(v) and 0 < v < math.inf)
NON_NEGATIVE = Check("a finite number >= 0", lambda v: _number(v) and 0 <= v < math.inf)
FRACTION = Check("a fraction in (0, 1]", lambda v: _number(v) and 0 < v <= 1)
UNIT = Check("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
BELOW_ONE = Check("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
POSITIVE_INT = Check("an integer >= 1", lambda v: _integer(v) and v >= 1)
NON_NEGATIVE_INT = Check("an integer >= 0", lambda v: _integer(v) and v >= 0)
BOOL = Check("true or false", lambda v: isinstance(v, bool))
TEXT = Check("a non-empty string", lambda v: isinstance(v, str) and v != "")
#: the norms attacks and bound propagation support
NORM_INDEX = Check("1, 2 or inf", lambda v: _norm_index(v) in (1.0, 2.0, math.inf))
#: the region geometry (eqs 14, 15) works for every l_p norm, p >= 1
P_AT_LEAST_ONE = Check("a norm index p >= 1 (or inf)", lambda v: _norm_index(v) >= 1)
RADII_BY_NORM = Check(
    "a positive finite radius for each of l1, l2, linf",
    lambda v: isinstance(v, Mapping) and set(v) == set(NORM_NAMES) and all(POSITIVE.accepts(r) for r in v.values()),
)
#: Lightning's limit_*_batches: a number of batches or a fraction of them
BATCH_LIMIT = Check("an integer >= 0 or a fraction in [0, 1]",
                    lambda v: NON_NEGATIVE_INT.accepts(v) or (isinstance(v, float) and 0 <= v <= 1))
DEVICES = Check("a positive integer, a list of device ids or 'auto'",
                lambda v: POSITIVE_INT.accepts(v) or v == "auto" or (isinstance(v, list) and bool(v)
                                                                     and all(NON_NEGATIVE_INT.accepts(d) for d in v)))

# The k_B schedule and lambda ramp of MMR and MMR-Universal (Sec. 5.1).
_SCHEDULE = {"k_b_start": FRACTION, "k_b_end": FRACTION, "lambda_warmup_epochs": NON_NEGATIVE_INT}
_MMR = {"gamma_b": POSITIVE, "gamma_d": POSITIVE, "lam": NON_NEGATIVE, "k_d": optional(POSITIVE_INT), **_SCHEDULE}
_PGD = {"eps": POSITIVE, "steps": POSITIVE_INT, "adv_fraction": UNIT, "step_size": optional(POSITIVE)}
_GEOMETRY = {"geometry": one_of("fast", "reference")}
_UNIVERSAL = {
    "lambda_1": NON_NEGATIVE, "lambda_inf": NON_NEGATIVE, "gamma_1": POSITIVE, "gamma_inf": POSITIVE,
    **_SCHEDULE, "weighting": one_of("per_norm", "per_term"), **_GEOMETRY,
}
# The radii, and the warm-up and ramp (in epochs, fractional) of the eps and kappa schedules of IBP training.
_IBP = {"eps": RADII_BY_NORM, "warmup_epochs": NON_NEGATIVE, "ramp_epochs": NON_NEGATIVE, "kappa_start": UNIT,
        "kappa_end": UNIT, "eps_factor_start": UNIT}

#: the options of every training scheme, by the ``_target_`` its config names
REGULARIZER_OPTIONS: dict[str, dict[str, Check]] = {
    "mmru.regularizers.base.Regularizer": {},
    "mmru.regularizers.mmr.MMR": {"p": P_AT_LEAST_ONE, **_MMR, **_GEOMETRY},
    "mmru.regularizers.universal.MMRUniversal": _UNIVERSAL,
    "mmru.regularizers.adversarial.AdversarialTraining": {"p": NORM_INDEX, **_PGD},
    "mmru.regularizers.adversarial.UnionAdversarialTraining": {
        "eps": RADII_BY_NORM, "steps": POSITIVE_INT, "adv_fraction": UNIT,
    },
    "mmru.regularizers.bound_training.BoundTraining": {
        "p": NORM_INDEX, "eps": POSITIVE, "eps_warmup_epochs": NON_NEGATIVE_INT, "method": one_of(*BOUND_METHODS),
    },
    # MMR needs clean points, so not the whole batch may be adversarial
    "mmru.regularizers.mmr_at.MMRAdversarialTraining": {"p": NORM_INDEX, **_MMR, **_PGD, "adv_fraction": BELOW_ONE},
    "mmru.regularizers.mmr_at.UniversalAdversarialTraining": {
        "p": NORM_INDEX, **_UNIVERSAL, **_PGD, "adv_fraction": BELOW_ONE,
    },
    "mmru.regularizers.ibp_union.IBPUnion": _IBP,
    "mmru.regularizers.ibp_union.CROWNIBPUnion": {**_IBP, "beta_start": UNIT, "beta_end": UNIT},
    "mmru.regularizers.universal_ibp.UniversalIBP": {**_UNIVERSAL, **_IBP},
}

#: train.py's options outside the regularizer, by their dotted path (absent ones are not checked)
TRAIN_OPTIONS: dict[str, Check] = {
    "seed": NON_NEGATIVE_INT,
    "lr": POSITIVE,
    "lr_drop_fraction": BELOW_ONE,
    "init_from": optional(TEXT),
    "arch": optional(TEXT),
    "batch_size": POSITIVE_INT,
    "certify_after_training": BOOL,
    **{f"dataset.eps.{name}": POSITIVE for name in NORM_NAMES},
    "dataset.val_fraction": BELOW_ONE,
    "dataset.pgd_steps": POSITIVE_INT,
    "dataset.augment": BOOL,
    "datamodule.num_workers": NON_NEGATIVE_INT,
    "datamodule.limit_train": optional(POSITIVE_INT),
    "datamodule.limit_test": optional(POSITIVE_INT),
    "trainer.accelerator": one_of("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
    "trainer.devices": DEVICES,
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.log_every_n_steps": POSITIVE_INT,
    **{f"trainer.limit_{split}_batches": BATCH_LIMIT for split in ("train", "val", "test")},
    "trainer.deterministic": Check("true, false or 'warn'", lambda v: isinstance(v, bool) or v == "warn"),
    "trainer.resident_data": BOOL,
    "trainer.compile": BOOL,
    "trainer.compile_mode": one_of("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "trainer.check_finite_every_n_steps": POSITIVE_INT,
}

#: certify.py's options (conf/certify.yaml)
CERTIFY_OPTIONS: dict[str, Check] = {
    "download": BOOL,
    **{f"eps.{name}": optional(POSITIVE) for name in NORM_NAMES},
    "norms": list_of(NORM_NAMES, nonempty=True),
    "split": one_of("test", "val"),
    "val_seed": NON_NEGATIVE_INT,
    "n_points": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "shard": NON_NEGATIVE_INT,
    "num_shards": POSITIVE_INT,
    "bounds": list_of(BOUND_METHODS, nonempty=False),
    "attack": one_of(*ATTACK_STRENGTHS),
    "mip": BOOL,
    "mip_norms": list_of(NORM_NAMES, nonempty=True),
    "mip_tighten_norms": list_of(("l1", "linf"), nonempty=False),
    "mip_scip_norms": list_of(("l1", "linf"), nonempty=False),
    "mip_time_limit": POSITIVE,
    "mip_scope": one_of("all", "union"),
    "radii": BOOL,
    "retry_undecided": BOOL,
    "device": Check("cpu, cuda, cuda:<index> or auto",
                    lambda v: isinstance(v, str) and (v in ("cpu", "cuda", "auto") or _cuda_index(v))),
    "mip_workers": POSITIVE_INT,
    "progress": BOOL,
    "wandb.enabled": BOOL,
    "wandb.offline": BOOL,
}

_ABSENT = object()


def check_options(values: Mapping[str, Any], table: Mapping[str, Check], prefix: str = "") -> None:
    """Raise ConfigError for the first value in ``values`` (dotted path -> value) its check rejects."""
    for key, check in table.items():
        value = values.get(key, _ABSENT)
        if value is not _ABSENT and not check.accepts(value):
            raise ConfigError(f"{prefix}{key} must be {check.what}, got {value!r}.")


def _select(cfg: DictConfig, keys) -> dict[str, Any]:
    """The resolved plain values of ``keys`` that ``cfg`` holds."""
    out = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def validate_regularizer(options: Mapping[str, Any]) -> None:
    """Every option of the scheme ``options['_target_']`` in range, and no option it does not have.

    A ``_target_`` without a table (a user's own scheme) is left to its constructor; every
    scheme of conf/regularizer/ has one (a test sees to it).
    """
    target = options.get("_target_")
    table = REGULARIZER_OPTIONS.get(target)
    if table is None:
        return
    for key in options:
        if key != "_target_" and key not in table:
            known = ", ".join(table) or "none"
            scheme = target.rsplit(".", 1)[-1]
            raise ConfigError(f"regularizer.{key} is not an option of {scheme} (its options: {known}).")
    check_options(options, table, prefix="regularizer.")


def validate_train_config(cfg: DictConfig) -> None:
    """train.py's options and its regularizer's, before anything is loaded or built."""
    check_options(_select(cfg, TRAIN_OPTIONS), TRAIN_OPTIONS)
    validate_regularizer(OmegaConf.to_container(cfg.regularizer, resolve=True))


def validate_certify_config(cfg: DictConfig) -> None:
    """certify.py's options, before the checkpoint is read or any output directory touched."""
    check_options(_select(cfg, CERTIFY_OPTIONS), CERTIFY_OPTIONS)
    if not cfg.shard < cfg.num_shards:
        raise ConfigError(f"shard must lie in [0, num_shards), got shard={cfg.shard} num_shards={cfg.num_shards}.")
