"""A ReLUNet and an input set as a mixed-integer linear program for HiGHS (Tjeng et al.).

Big-M encoding of each hidden unit with pre-activation bounds [l, u] valid over the input set:
    unstable (l < 0 < u): a >= z, a >= 0, a <= u d, a <= z - l (1 - d), d in {0, 1};
    active (l >= 0): a = z;  inactive (u <= 0): a = 0.
Only the unstable units get columns. A stable unit is an affine function of the layer below, so
every layer's activations are kept as an affine map of the program's *basis* columns (the input
x' and the unstable units' a), a = E [basis] + c, composed layer by layer (sparse): each row then
reads the input pixels of its receptive field and the unstable units below it, not every unit of
the layer below. On the published MNIST network at eps_inf = 0.1 this is 16,662 nonzeros in 204
rows where one column per unit took 330,811 in 3,319 (measured on test point 84): HiGHS spent
120 s at the root node of the larger program and solves the smaller one to optimality in 5 s.
Composing changes only the order of the float64 sums of the same products, which the bounds'
rounding tolerance covers (``mmru.verify.bounds``, any summation order); the deciders keep it.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from mmru.models import ReLUNet
from mmru.verify import affine

INF = math.inf


class Program:
    """A MILP under construction: columns with bounds, rows lo <= <val, x[idx]> <= hi."""

    def __init__(self) -> None:
        self.col_lo: list[float] = []
        self.col_hi: list[float] = []
        self.binary: list[int] = []
        self.rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []

    def add_cols(self, lo, hi, binary: bool = False) -> np.ndarray:
        lo, hi = np.atleast_1d(np.asarray(lo, float)), np.atleast_1d(np.asarray(hi, float))
        first = len(self.col_lo)
        self.col_lo += lo.tolist()
        self.col_hi += hi.tolist()
        cols = np.arange(first, first + len(lo))
        if binary:
            self.binary += cols.tolist()
        return cols

    def add_row(self, idx, val, lo: float, hi: float) -> None:
        self.rows.append((np.asarray(idx, np.int32), np.asarray(val, float), float(lo), float(hi)))

    def solve(
        self, cost: dict[int, float], extra_rows: list[tuple], time_limit: float, options: dict
    ) -> highspy._Highs:
        """Minimise <cost, x> subject to the rows and ``extra_rows``, in a fresh solver with
        ``options`` (extras: gaps, an objective target) and always ``OPTIONS``."""
        rows = self.rows + list(extra_rows)
        lp = highspy.HighsLp()
        n = len(self.col_lo)
        lp.num_col_, lp.num_row_ = n, len(rows)
        c = np.zeros(n)
        for j, v in cost.items():
            c[j] += v
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = c, np.array(self.col_lo), np.array(self.col_hi)
        lp.row_lower_ = np.array([r[2] for r in rows])
        lp.row_upper_ = np.array([r[3] for r in rows])
        m = lp.a_matrix_
        m.format_, m.num_col_, m.num_row_ = highspy.MatrixFormat.kRowwise, n, len(rows)
        m.start_ = np.concatenate([[0], np.cumsum([len(r[0]) for r in rows])]).astype(np.int32)
        # (a program may have no rows: an LP relaxation over the box whose units below are all stable)
        m.index_ = np.concatenate([np.zeros(0, np.int32)] + [r[0] for r in rows]).astype(np.int32)
        m.value_ = np.concatenate([np.zeros(0)] + [r[1] for r in rows])
        kinds = np.full(n, highspy.HighsVarType.kContinuous)
        kinds[self.binary] = highspy.HighsVarType.kInteger
        lp.integrality_ = kinds.tolist()
        # The bare solver class: highspy.Highs registers callbacks while HiGHS's output is
        # still on, which prints its banner to stdout.
        h = highspy._Highs()
        for key, value in {"time_limit": max(time_limit, 1e-3), **options, **OPTIONS}.items():
            if h.setOptionValue(key, value) != highspy.HighsStatus.kOk:
                raise ValueError(f"HiGHS rejected the option {key}={value!r}")
        h.passModel(lp)
        if h.run() == highspy.HighsStatus.kError and h.getModelStatus() == highspy.HighsModelStatus.kNotset:
            # HiGHS's thread pool is process-wide and fixed by the first run: after a run with
            # another ``threads`` setting (anyone's, in this process) every run errors out
            # before solving. Rebuild the pool for our setting and run again.
            highspy._Highs.resetGlobalScheduler(True)
            if h.run() == highspy.HighsStatus.kError:
                raise RuntimeError(f"HiGHS failed to solve the MILP: {h.getModelStatus()}")
        return h


# Every solve runs with these, whatever the caller's options say.
# Feasibility tolerances well below the margins we decide on. One thread and a fixed seed:
# the same MILP gets the same search, on every machine and whatever ran before it (these
# MILPs are small, HiGHS gains little from threads on them, and points can be spread over
# processes). No output: HiGHS's log would go to the console.
OPTIONS = {
    "mip_feasibility_tolerance": 1e-9,
    "primal_feasibility_tolerance": 1e-9,
    "threads": 1,
    "random_seed": 0,
    "output_flag": False,
}


@dataclass
class Encoded:
    """The last hidden layer's activations as an affine map of the program's basis columns:
    a_L = E @ x[cols] + c (E sparse, [n_L, len(cols)])."""

    cols: np.ndarray
    E: sp.csr_matrix
    c: np.ndarray


def encode_relu_net(prog: Program, net: ReLUNet, x_cols: np.ndarray, hidden: list[np.ndarray]) -> Encoded:
    """Add the network's hidden layers (columns for the unstable units only); return a_L's affine map.

    ``hidden[k]`` is a [2, n_k] array of bounds on z_k valid over the input set.
    """
    cols = np.asarray(x_cols)
    E, c = sp.identity(len(cols), format="csr"), np.zeros(len(cols))  # a_0 = x'
    for k, (lo, hi) in enumerate(hidden):
        w = sp.csr_matrix(affine.dense_rows(net, k).detach().cpu().numpy())
        Z = (w @ E).tocsr()  # z_k = Z [basis] + zc
        zc = w @ c + affine.bias_vector(net, k).detach().cpu().numpy()
        active = (hi > 0) & (lo >= 0)
        unstable = np.nonzero((hi > 0) & (lo < 0))[0]
        new_cols = []
        for j in unstable:
            row = slice(Z.indptr[j], Z.indptr[j + 1])
            idx, val = cols[Z.indices[row]], Z.data[row]
            a = prog.add_cols(0.0, hi[j])[0]
            d = prog.add_cols(0.0, 1.0, binary=True)[0]
            prog.add_row(np.r_[a, idx], np.r_[1.0, -val], zc[j], INF)  # a >= z
            # a <= z - l (1 - d)
            prog.add_row(np.r_[a, idx, d], np.r_[1.0, -val, -lo[j]], -INF, zc[j] - lo[j])
            prog.add_row([a, d], [1.0, -hi[j]], -INF, 0.0)  # a <= u d
            new_cols.append(a)
        # active rows keep z's map, unstable ones become their own column, inactive ones 0
        keep = sp.diags(active.astype(float)) @ Z
        own = sp.csr_matrix((np.ones(len(unstable)), (unstable, np.arange(len(unstable)))), shape=(len(hi), len(unstable)))
        E = sp.hstack([keep, own], format="csr")
        c = np.where(active, zc, 0.0)
        cols = np.r_[cols, np.asarray(new_cols, dtype=cols.dtype)]
    return Encoded(cols, E, c)


def margin_row(net: ReLUNet, enc: Encoded, y: int, s: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Columns, coefficients and constant of f_y - f_s in terms of the basis columns."""
    k = len(net.layers) - 1
    w = affine.dense_rows(net, k).detach().cpu().numpy()
    b = affine.bias_vector(net, k).detach().cpu().numpy()
    g = enc.E.T @ (w[y] - w[s])
    nz = np.nonzero(g)[0]
    return enc.cols[nz], g[nz], float((w[y] - w[s]) @ enc.c + b[y] - b[s])


def abs_deviation(prog: Program, x: np.ndarray, x_cols: np.ndarray, lo, hi) -> np.ndarray:
    """Columns t with t_i >= |x'_i - x_i| (an l1 distance's parts)."""
    t = prog.add_cols(0.0 * x, np.maximum(hi - x, x - lo))
    for i in range(len(x)):
        prog.add_row([x_cols[i], t[i]], [1.0, -1.0], -INF, x[i])
        prog.add_row([x_cols[i], t[i]], [-1.0, -1.0], -INF, -x[i])
    return t
