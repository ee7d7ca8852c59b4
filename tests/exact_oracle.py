"""Exact extremes over l_1 / l_inf balls of tiny Linear-only ReLU nets: an oracle for tests,
written independently of ``mmru.verify``."""

from __future__ import annotations

import highspy
import numpy as np
import torch

from mmru.models import ReLUNet


class ExactProgram:
    """Exact extremes of a linear function of one layer of a Linear-only ReLUNet over the
    l_1 or l_inf ball ∩ [0, 1]^d: a mixed-integer program (big-M from a plain interval pass
    written here, independent of ``mmru.verify``) solved to proven optimality by HiGHS."""

    def __init__(self, net: ReLUNet, x: torch.Tensor, eps: float, p: float):
        weights = [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in net.layers]
        centre = x.reshape(-1).numpy()
        lo, hi = np.clip(centre - eps, 0, 1), np.clip(centre + eps, 0, 1)
        d = len(centre)
        self.cols = [(lo, hi, 0)]  # per variable block: lower, upper, integrality
        self.rows: list[tuple[dict[int, float], float, float]] = []
        x_idx = self._add(lo, hi)
        if p == 1.0:  # t_i >= |x_i - c_i|, sum t <= eps
            t = self._add(np.zeros(d), np.full(d, eps))
            for i in range(d):
                self.rows.append(({t[i]: 1.0, x_idx[i]: -1.0}, -centre[i], np.inf))
                self.rows.append(({t[i]: 1.0, x_idx[i]: 1.0}, centre[i], np.inf))
            self.rows.append(({j: 1.0 for j in t}, -np.inf, eps))
        self.z, prev, box = [], x_idx, (lo, hi)
        for k, (w, b) in enumerate(weights):
            mid, rad = (box[0] + box[1]) / 2, (box[1] - box[0]) / 2
            l, u = w @ mid + b - np.abs(w) @ rad - 1e-6, w @ mid + b + np.abs(w) @ rad + 1e-6
            z = self._add(l, u)
            for j in range(len(b)):
                row = {z[j]: 1.0}
                for i, col in enumerate(prev):
                    row[col] = row.get(col, 0.0) - w[j, i]
                self.rows.append((row, b[j], b[j]))
            self.z.append(z)
            if k == len(weights) - 1:
                break
            a = self._add(np.zeros(len(b)), np.maximum(u, 0))
            for j in range(len(b)):  # a = relu(z); u <= 0: a = 0 by its bounds
                if l[j] >= 0:
                    self.rows.append(({a[j]: 1.0, z[j]: -1.0}, 0.0, 0.0))
                elif u[j] > 0:  # a >= z, a <= z - l (1 - delta), a <= u delta
                    (delta,) = self._add([0.0], [1.0], integral=1)
                    self.rows.append(({a[j]: 1.0, z[j]: -1.0}, 0.0, np.inf))
                    self.rows.append(({a[j]: 1.0, z[j]: -1.0, delta: -l[j]}, -np.inf, -l[j]))
                    self.rows.append(({a[j]: 1.0, delta: -u[j]}, -np.inf, 0.0))
            prev, box = a, (np.zeros(len(b)), np.maximum(u, 0))
        self.n = sum(len(c[0]) for c in self.cols[1:])
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n, len(self.rows)
        lp.col_cost_ = np.zeros(self.n)
        lp.col_lower_ = np.concatenate([c[0] for c in self.cols[1:]])
        lp.col_upper_ = np.concatenate([c[1] for c in self.cols[1:]])
        lp.row_lower_ = np.array([r[1] for r in self.rows], float)
        lp.row_upper_ = np.array([r[2] for r in self.rows], float)
        m = lp.a_matrix_
        m.format_, m.num_col_, m.num_row_ = highspy.MatrixFormat.kRowwise, self.n, len(self.rows)
        m.start_ = np.concatenate([[0], np.cumsum([len(r[0]) for r in self.rows])]).astype(np.int32)
        m.index_ = np.array([col for r in self.rows for col in r[0]], np.int32)
        m.value_ = np.array([val for r in self.rows for val in r[0].values()], float)
        kinds = [highspy.HighsVarType.kInteger if c[2] else highspy.HighsVarType.kContinuous
                 for c in self.cols[1:] for _ in range(len(c[0]))]
        lp.integrality_ = kinds
        self.solver = highspy._Highs()  # the bare class prints no banner
        for key, value in {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0, "mip_feasibility_tolerance": 1e-9,
                           "primal_feasibility_tolerance": 1e-9, "threads": 1, "random_seed": 0,
                           "output_flag": False}.items():
            self.solver.setOptionValue(key, value)
        self.solver.passModel(lp)

    def _add(self, lo, hi, integral: int = 0) -> list[int]:
        start = sum(len(c[0]) for c in self.cols[1:])
        self.cols.append((np.asarray(lo, float), np.asarray(hi, float), integral))
        return list(range(start, start + len(lo)))

    def minimum(self, k: int, c: np.ndarray) -> float:
        """min of <c, z_k> (z_k: layer k's pre-activation, the logits last), proven optimal."""
        objective = np.zeros(self.n)
        objective[self.z[k]] = c
        self.solver.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), objective)
        if self.solver.run() == highspy.HighsStatus.kError:
            # HiGHS's thread pool is process-wide, fixed by the first run of the process (see
            # mmru.verify.milp); rebuild it for one thread.
            highspy._Highs.resetGlobalScheduler(True)
            self.solver.run()
        assert self.solver.getModelStatus() == highspy.HighsModelStatus.kOptimal, self.solver.getModelStatus()
        return float(self.solver.getInfo().objective_function_value)
