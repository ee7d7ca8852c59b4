"""``mmru.verify.scip_program``: rows reach SCIP as written, and SCIP's solver stack stays off the console."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from mmru.verify.milp import Program
from mmru.verify.scip_program import ScipProgram


def test_a_row_that_names_a_column_twice_adds_its_coefficients():
    """min x s.t. 0.75 x + 1.25 x >= 1, x in [0, 1]: the optimum 0.5 needs the sum, 2 x; either entry
    alone (0.75 or 1.25, as a dict keeping one of them would) gives 4/3 (infeasible) or 0.8."""
    prog = Program()
    x = prog.add_cols(np.zeros(1), np.ones(1))
    prog.add_row(np.array([x[0], x[0]]), np.array([0.75, 1.25]), 1.0, np.inf)
    scip = ScipProgram(prog)
    assert scip.solve({int(x[0]): 1.0}, [], 10.0) == "optimal"
    assert abs(scip.point(x)[0] - 0.5) < 1e-8


SOLVE = textwrap.dedent("""
    import os
    import sys
    import numpy as np
    import mmru.verify.scip_program as sp
    from mmru.verify.milp import Program
    if sys.argv[1:] == ["unfiltered"]:
        sp.SOLVER_NOISE = ()
    prog = Program()
    x = prog.add_cols(np.zeros(2), np.ones(2))
    b = prog.add_cols(np.zeros(1), np.ones(1), True)
    prog.add_row(np.array([x[0], x[1], b[0]]), np.ones(3), 0.5, np.inf)
    scip = sp.ScipProgram(prog)
    scip.model.setParam("numerics/lpfeastolfactor", 1e-3)  # every LP asks SoPlex for 1e-12
    assert scip.solve({int(x[0]): 1.0, int(x[1]): 1.0, int(b[0]): 2.0}, [], 10.0) == "optimal"
    with sp.quiet_stderr():
        os.write(2, b"kept line\\n")
""")


def test_scip_keeps_soplex_tolerance_warnings_off_the_console_and_nothing_else():
    """SoPlex warns on the C stderr, past SCIP's hideOutput, when SCIP's stability retries ask for a
    tolerance below 1e-10; here forced on every LP by SCIP's LP tolerance factor. In a fresh process:
    the solve leaves stderr empty, while another line written there during a solve still arrives."""
    unfiltered = subprocess.run([sys.executable, "-c", SOLVE, "unfiltered"],
                                capture_output=True, text=True, timeout=300)
    assert unfiltered.returncode == 0, unfiltered.stderr
    assert "without GMP" in unfiltered.stderr  # the warning this test is about is really produced
    done = subprocess.run([sys.executable, "-c", SOLVE],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "kept line\n" and done.stdout == ""
