"""A ``milp.Program`` in SCIP (PySCIPOpt), with the l_2 ball's convex quadratic constraint.

HiGHS solves no quadratic constraints; SCIP solves mixed-integer programs with convex
quadratic ones by branch and bound on the binaries, the quadratic constraint entering the LP
relaxations as gradient cuts (outer approximation). The program is built once per point and
re-solved per target class: between solves the transformed problem is freed and only the
objective and the margin row change.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import pyscipopt
from pyscipopt.scip import Expr, ExprCons, Term

from mmru.verify.milp import Program

INF = math.inf

#: SCIP's absolute feasibility tolerance on every row, the quadratic one included
#: (``constraints/nonlinear/violscale`` stays 'n': violations are not scaled)
FEASTOL = 1e-9

# Every solve runs with these, as milp.OPTIONS for HiGHS. Tolerances well below the margins we
# decide on, the dual one equal to the primal one (with SCIP's default dual 1e-7 the tiny nets'
# distance searches took 20x longer, SCIP retrying unstable LPs at tolerances SoPlex refuses,
# on stderr), and SCIP's epsilon below them. One thread (SCIP's default branch and bound is
# sequential; its LP solver too) and a fixed seed: the same program gets the same search on
# every machine. Wall-clock time limits, as HiGHS's. No output: SCIP's log would go to the
# console.
PARAMS = {
    "numerics/feastol": FEASTOL,
    "numerics/dualfeastol": FEASTOL,
    "numerics/epsilon": FEASTOL / 10,
    "lp/threads": 1,
    "randomization/randomseedshift": 0,
    "randomization/lpseed": 0,
    "randomization/permutationseed": 0,
    "timing/clocktype": 2,
    "display/verblevel": 0,
}


#: SoPlex's warnings when SCIP's stability retries ask it for tolerances below 1e-10 (FEASTOL x
#: SCIP's tightening factor 1e-3): written to the C stderr, past ``hideOutput``, and about nothing
#: the user can act on (the retry goes on at 1e-10)
SOLVER_NOISE = (b"without GMP - using",)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 into a temporary file while the block runs, then every line of it back to
    stderr except those containing a ``SOLVER_NOISE`` string: nothing else is lost, only delayed (a
    file, not a pipe, so a chatty solver cannot block on a full buffer)."""
    noise = SOLVER_NOISE
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if not any(n in line for n in noise)]
            if kept:
                os.write(2, b"".join(kept))


class ScipProgram:
    """``prog``'s columns, bounds, binaries and rows in a SCIP model, plus what this module adds:
    the squared l_2 distance of the columns ``x_cols`` to ``center`` bounded by a radius or by
    an epigraph column, and a re-settable objective and extra row."""

    def __init__(self, prog: Program):
        self.model = pyscipopt.Model()
        self.model.hideOutput()
        for key, value in PARAMS.items():
            self.model.setParam(key, value)
        # SCIP's fast settings for primal heuristics and cutting planes: on tiny nets the
        # default ones took 1.7x the CPU time for the same decisions (on cnn_small the root
        # LP relaxation dominates either way)
        self.model.setHeuristics(pyscipopt.SCIP_PARAMSETTING.FAST)
        self.model.setSeparating(pyscipopt.SCIP_PARAMSETTING.FAST)
        binary = set(prog.binary)
        self.vars = [
            self.model.addVar(f"c{j}", "B" if j in binary else "C", lb=None if lo == -INF else lo,
                              ub=None if hi == INF else hi)
            for j, (lo, hi) in enumerate(zip(prog.col_lo, prog.col_hi))
        ]
        # one Term per column, built once: constructing Terms per nonzero was most of the build time
        self._terms = [Term(v) for v in self.vars]
        for idx, val, lo, hi in prog.rows:
            self._add_row(idx, val, lo, hi)
        self._extra = []

    def _linear(self, idx, val) -> Expr:
        keys = [self._terms[j] for j in np.asarray(idx).tolist()]
        vals = np.asarray(val, float).tolist()
        terms = dict(zip(keys, vals))  # the usual row: one entry per column
        if len(terms) < len(keys):  # repeated columns: their coefficients add up
            terms = {}
            for key, v in zip(keys, vals):
                terms[key] = terms.get(key, 0.0) + v
        return Expr(terms)

    def _add_row(self, idx, val, lo: float, hi: float):
        cons = ExprCons(self._linear(idx, val), None if lo == -INF else lo, None if hi == INF else hi)
        return self.model.addCons(cons)

    def add_col(self, lo: float, hi: float) -> int:
        """A continuous column (e.g. an epigraph variable); its index."""
        self.vars.append(self.model.addVar(f"c{len(self.vars)}", "C", lb=lo, ub=hi))
        self._terms.append(Term(self.vars[-1]))
        return len(self.vars) - 1

    def add_squared_distance(self, x_cols: np.ndarray, center: np.ndarray, radius: float | None = None,
                             epigraph: int | None = None) -> None:
        """sum_i (x'_i - center_i)^2 <= radius^2, or <= the column ``epigraph`` (convex either way)."""
        cols = np.asarray(x_cols).tolist()
        terms = {Term(self.vars[j], self.vars[j]): 1.0 for j in cols}
        for j, c in zip(cols, np.asarray(center, float).tolist()):
            terms[self._terms[j]] = -2.0 * c
        constant = float(np.dot(center, center))
        if epigraph is not None:
            terms[self._terms[epigraph]] = -1.0
            self.model.addCons(ExprCons(Expr(terms), None, -constant))
        else:
            self.model.addCons(ExprCons(Expr(terms), None, radius * radius - constant))

    def solve(self, cost: dict[int, float], extra_rows: list[tuple], time_limit: float,
              primal_limit: float = -INF, upper: dict[int, float] | None = None) -> str:
        """Minimise <cost, x> subject to the rows and ``extra_rows`` (replacing the previous
        call's), each column j in ``upper`` capped at upper[j]; stop at the first incumbent with
        objective <= ``primal_limit``. Returns SCIP's status."""
        m = self.model
        m.freeTransform()
        for cons in self._extra:
            m.delCons(cons)
        self._extra = [self._add_row(*row) for row in extra_rows]
        for j, hi in (upper or {}).items():
            m.chgVarUb(self.vars[j], hi)
        objective = Expr({self._terms[j]: float(v) for j, v in cost.items()})
        m.setObjective(objective, "minimize")
        m.setParam("limits/time", max(time_limit, 1e-3))
        m.setParam("limits/primal", _primal_limit(primal_limit))
        with quiet_stderr():
            m.optimize()
        return m.getStatus()

    def resume(self, time_limit: float, primal_limit: float = -INF) -> str:
        """Carry on the last solve (its search so far is kept) with new limits."""
        m = self.model
        m.setParam("limits/time", m.getSolvingTime() + max(time_limit, 1e-3))
        m.setParam("limits/primal", _primal_limit(primal_limit))
        with quiet_stderr():
            m.optimize()
        return m.getStatus()

    def dual_bound(self) -> float:
        """A proven lower bound on the last solve's minimum (inf: proven infeasible)."""
        bound = self.model.getDualbound()
        return INF if bound >= self.model.infinity() else -INF if bound <= -self.model.infinity() else bound

    def point(self, cols: np.ndarray) -> np.ndarray | None:
        """The best solution's values of ``cols`` (None: no solution found)."""
        if self.model.getNSols() == 0:
            return None
        sol = self.model.getBestSol()
        return np.array([sol[self.vars[j]] for j in np.asarray(cols).tolist()])


def _primal_limit(value: float) -> float:
    """SCIP's ``limits/primal`` for "stop at an incumbent <= value"; -inf: never stop early
    (SCIP's "unset" value, SCIP_INVALID = 1e99)."""
    return value if math.isfinite(value) else 1e99
