"""A self-audit of a finished certification: ``python -m mmru.audit <certify dir>``.

It re-examines what ``certify.py`` wrote (``summary.json``, ``points.jsonl``) with means the
certification cascade does not use, and reports every *violation*, a claim that is
demonstrably false:

- the records contradict themselves or the summary (:mod:`mmru.audit.consistency`);
- an attack outside the cascade (the AutoAttack standard suite, long multi-restart PGD) finds a
  counterexample, passing :func:`mmru.attacks.check_adversarial`, for a point the run calls
  certified (:mod:`mmru.audit.attacks`);
- on nets small enough for it, the exact minimal l_1 / l_∞ distance of the MIP contradicts a
  certified radius or a recorded counterexample norm (:mod:`mmru.audit.exact`).

The verdict goes to ``audit.json`` in the certify directory (:func:`mmru.audit.run.run_audit`).
"""

from mmru.audit.run import AuditOptions, run_audit

__all__ = ["AuditOptions", "run_audit"]
