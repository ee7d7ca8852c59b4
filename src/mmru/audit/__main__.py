"""``python -m mmru.audit <certify dir>``: exit status 1 on any violation (listed in audit.json).

    python -m mmru.audit logs/demo/universal/certify
    python -m mmru.audit <run>/certify --n-points 50 --attacks pgd
    python -m mmru.audit <run>/certify --exact        # small nets: also the exact MIP distances
"""

from __future__ import annotations

import argparse
import sys

from mmru.audit.attacks import ATTACKS, PGD_RESTARTS, PGD_STEPS
from mmru.audit.exact import MAX_UNITS, TIME_LIMIT
from mmru.audit.run import AuditOptions, run_audit
from mmru.cli import user_errors


def parse_args(argv: list[str] | None) -> tuple[str, AuditOptions]:
    parser = argparse.ArgumentParser(prog="python -m mmru.audit", description=__doc__.splitlines()[0])
    parser.add_argument("certify_dir", help="a directory written by certify.py (summary.json, points.jsonl)")
    parser.add_argument("--n-points", type=int, default=None, help="audit only the first N points")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"comma-separated subset of {','.join(ATTACKS)}, or none (default: all)")
    parser.add_argument("--exact", action="store_true",
                        help="also compare with exact MIP distances (l1, linf) on nets small enough (slow)")
    parser.add_argument("--exact-max-units", type=int, default=MAX_UNITS,
                        help=f"largest number of hidden units for the exact comparison (default {MAX_UNITS})")
    parser.add_argument("--exact-time-limit", type=float, default=TIME_LIMIT,
                        help=f"MIP seconds per point and norm (default {TIME_LIMIT:g})")
    parser.add_argument("--pgd-steps", type=int, default=PGD_STEPS, help=f"default {PGD_STEPS}")
    parser.add_argument("--pgd-restarts", type=int, default=PGD_RESTARTS, help=f"default {PGD_RESTARTS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250, help="AutoAttack batch size")
    parser.add_argument("--ckpt", help="the checkpoint (default: the one summary.json names)")
    parser.add_argument("--dataset", help="the dataset (default: the run's)")
    parser.add_argument("--data-dir", help="where the dataset lives (default: $MMRU_DATA_DIR or ./data)")
    args = parser.parse_args(argv)
    attacks = () if args.attacks == "none" else tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    return args.certify_dir, AuditOptions(
        attacks=attacks, n_points=args.n_points, exact=args.exact, exact_max_units=args.exact_max_units,
        exact_time_limit=args.exact_time_limit, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
        seed=args.seed, batch_size=args.batch_size, ckpt=args.ckpt,
        dataset=args.dataset, data_dir=args.data_dir)


def main(argv: list[str] | None = None) -> int:
    certify_dir, options = parse_args(argv)
    with user_errors():
        result = run_audit(certify_dir, options)
    for norm, entry in result["norms"].items():
        broken = ", ".join(f"{k} {v}" for k, v in entry["broken"].items())
        print(f"{norm}: eps={entry['eps']:.4g}, {entry['certified']} of {entry['points']} points certified, "
              f"attacked by the audit; broken: {broken}; exact: {entry['exact']}")
    print(f"audit of {result['points_audited']} points in {result['seconds']['total']:.0f} s: "
          f"{len(result['violations'])} violations {result['violation_counts'] or ''}".rstrip())
    for v in result["violations"][:20]:
        print(f"  point {v['index']} {v['norm']}: {v['kind']}: {v['detail']}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
