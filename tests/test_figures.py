"""The figure CLI and plot helpers write non-empty PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmru.figures import ball_vertices, main, plot_robustness_curves, plot_universal_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_cli_writes_figures_1_and_2(tmp_path, capsys):
    written = main(["--out", str(tmp_path / "figs")])
    assert [p.name for p in written] == ["figure1.png", "figure2.png"]
    assert all(_is_png(p) for p in written)
    assert str(written[0]) in capsys.readouterr().out


def test_robustness_and_universal_curves(tmp_path):
    eps = np.linspace(0, 0.3, 7)
    curves = {
        "l1": {"eps": eps, "certified": np.linspace(0.1, 0.9, 7), "empirical": np.linspace(0.05, 0.5, 7)},
        "linf": {"eps": eps, "empirical": np.linspace(0.05, 0.5, 7)},
    }
    assert _is_png(plot_robustness_curves(curves, tmp_path / "robust.png"))
    errors = {p: np.linspace(0.0, 1.0, 7) ** (1 / p if p != math.inf else 0.1) for p in [1, 1.5, 2, math.inf]}
    assert _is_png(plot_universal_curve(eps, errors, tmp_path / "sub" / "universal.png"))


@pytest.mark.parametrize("d", [2, 3])
def test_ball_vertices(d):
    l1, linf = ball_vertices(1.5, 1.0, d)
    assert l1.shape == (2 * d, d) and linf.shape == (2**d, d)
    assert np.allclose(np.abs(l1).sum(axis=1), 1.5) and np.allclose(np.abs(linf), 1.0)
