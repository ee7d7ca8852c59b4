"""The audit of one certify directory, written to its ``audit.json``."""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmru.audit.attacks import ATTACKS, PGD_RESTARTS, PGD_STEPS, attack_certified
from mmru.audit.consistency import record_violations, summary_violations, violation
from mmru.audit.exact import EXACT_NORMS, MAX_UNITS, TIME_LIMIT, exact_check
from mmru.audit.loading import load_certify_run
from mmru.certification.cascade import NORMS
from mmru.certification.records import CERTIFIED
from mmru.errors import UserError


@dataclass
class AuditOptions:
    """What the audit runs; the defaults are the full audit."""

    attacks: tuple[str, ...] = ATTACKS  #: subset of ("autoattack", "pgd")
    n_points: int | None = None  #: audit only the first n certified-run points (None: all)
    exact: bool = False  #: compare with the exact MIP distance on small nets (slow: opt in)
    exact_max_units: int = MAX_UNITS  #: ... with at most this many hidden units
    exact_time_limit: float = TIME_LIMIT  #: seconds per point and norm
    pgd_steps: int = PGD_STEPS
    pgd_restarts: int = PGD_RESTARTS
    seed: int = 0
    batch_size: int = 250  #: AutoAttack's batch size
    ckpt: str | None = None  #: default: the checkpoint summary.json names, else <run>/checkpoints/last.ckpt
    dataset: str | None = None  #: default: the run's dataset
    data_dir: str | None = None  #: default: $MMRU_DATA_DIR, else ./data

    def validate(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise UserError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)} (or none)")
        if self.n_points is not None and not self.n_points > 0:
            raise UserError(f"n_points must be a positive integer, got {self.n_points}")
        positive = {"exact_time_limit": self.exact_time_limit, "batch_size": self.batch_size,
                    "pgd_steps": self.pgd_steps, "pgd_restarts": self.pgd_restarts}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"{name} must be positive, got {value}")
        if not self.exact_max_units >= 0:
            raise UserError(f"exact_max_units must be non-negative, got {self.exact_max_units}")


def run_audit(certify_dir: str | Path, options: AuditOptions | None = None) -> dict:
    """Audit ``certify_dir``; writes and returns audit.json's content (``ok``: no violation)."""
    options = options or AuditOptions()
    options.validate()
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    run = load_certify_run(certify_dir, options.ckpt, options.dataset, options.data_dir, options.n_points)
    seconds["load"] = time.perf_counter() - start
    position = run.position()
    audited = [r for r in run.records if r.index in position]
    net = run.net.eval()
    violations = record_violations(audited, run.eps) + _correctness_violations(run, audited, position)
    if options.n_points is None:
        violations += summary_violations(run.records, run.summary, run.eps)

    norms = {}
    for norm, eps in run.eps.items():
        p = NORMS[norm]
        certified = [r for r in audited if r.norm == norm and r.status == CERTIFIED]
        rows = torch.tensor([position[r.index] for r in certified], dtype=torch.long)
        report = attack_certified(net, run.x[rows], run.y[rows], eps, p, options.attacks, options.seed,
                                  options.batch_size, (options.pgd_steps, options.pgd_restarts))
        for name, broken in report.broken.items():
            for j, norm_value in zip(broken, report.norms[name]):
                r = certified[j]
                violations.append(violation(
                    "counterexample", r.index, norm, f"certified by {r.certified_by}, but {name} found a checked "
                    f"counterexample of norm {norm_value:.6g} <= eps", attack=name, eps=eps,
                    adversarial_norm=norm_value, certified_radius=r.certified_radius))
        for name, spent in report.seconds.items():
            seconds[name] = seconds.get(name, 0.0) + spent
        norms[norm] = {"eps": eps, "points": sum(r.norm == norm for r in audited), "certified": len(certified),
                       "attacked_by_audit": report.attacked,
                       "broken": {name: len(b) for name, b in report.broken.items()},
                       "rejected_by_check": report.rejected,
                       "exact": _exact(run, net, position, [r for r in audited if r.norm == norm], norm, options,
                                       violations, seconds)}
    seconds["total"] = time.perf_counter() - start
    result = {
        "certify_dir": str(Path(certify_dir).resolve()), "checkpoint": str(run.checkpoint),
        "dataset": options.dataset or run.summary["run"].get("dataset"), "split": run.summary.get("split", "test"),
        "points_audited": len(run.indices), "records_audited": len(audited),
        "options": {**{k: v for k, v in asdict(options).items() if k not in ("ckpt", "dataset", "data_dir")},
                    "attacks": list(options.attacks)},
        "norms": norms, "violation_counts": dict(Counter(v["kind"] for v in violations)),
        "violations": [_finite(v) for v in violations], "ok": not violations, "seconds": seconds,
    }
    (Path(certify_dir) / "audit.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    return result


def _correctness_violations(run, audited, position) -> list[dict]:
    """A record's ``correct`` flag must be what the (float64) net says: else the checkpoint or
    the data differ from those the run certified."""
    with torch.no_grad():
        correct = copy.deepcopy(run.net).double()(run.x.double()).argmax(1) == run.y
    return [violation("correct_flag_mismatch", r.index, r.norm, f"recorded correct={r.correct}, the net says "
                      f"{bool(correct[position[r.index]])}") for r in audited if r.correct != bool(correct[position[r.index]])]


def _exact(run, net, position, records, norm, options: AuditOptions, violations: list, seconds: dict) -> dict:
    """The MIP comparison of one norm, or why it was skipped."""
    if not options.exact:
        return {"skipped": "not asked for (--exact)"}
    if norm not in EXACT_NORMS:
        return {"skipped": "the exact MIP handles l1 and linf only"}
    if net.num_hidden > options.exact_max_units:
        return {"skipped": f"the net has {net.num_hidden} hidden units > exact_max_units {options.exact_max_units}"}
    report, found = exact_check(net, run.x, run.y, position, records, EXACT_NORMS[norm], options.exact_time_limit)
    violations += found
    seconds["exact"] = seconds.get("exact", 0.0) + report.seconds
    return {"compared": report.compared, "not_optimal": report.not_optimal}


def _finite(v: dict) -> dict:
    """JSON has no infinity: unreachable distances become null."""
    return {k: (None if isinstance(x, float) and not math.isfinite(x) else x) for k, x in v.items()}
