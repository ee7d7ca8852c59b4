"""The figures plot the right values: Figure 1's balls and radii, Figure 2's curves, the curves of certify.py.

Values are read back from the matplotlib Figures (``draw_*``) and checked against independent
computations (hulls, radial functions) and the numbers the paper reports; the CLI writes PNGs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.patches import Circle, Polygon
from scipy.spatial import ConvexHull

from mmru.figures import (
    ball_vertices,
    draw_figure1,
    draw_figure2,
    draw_robustness_curves,
    draw_universal_curve,
    main,
    plot_robustness_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_writes_figures_1_and_2(tmp_path, capsys):
    written = main(["--out", str(tmp_path / "figs")])
    assert [p.name for p in written] == ["figure1.png", "figure2.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)
    assert str(written[0]) in capsys.readouterr().out


# ---- Figure 2: eqs (5), (6), (7) for p = 2, eps_inf = 1 --------------------------------------

@pytest.fixture(scope="module")
def figure2_axes():
    return draw_figure2().axes


#: the paper (Sec. 3): the ratio of (7) to max((5), (6)) peaks at eps1 = sqrt(d) with 3.81 (d = 784), 5.31 (d = 3072)
PUBLISHED_PEAK = {784: 3.81, 3072: 5.31}


@pytest.mark.parametrize("column,d", [(0, 784), (1, 3072)])
def test_figure2_curves(figure2_axes, column, d):
    curves, ratio_ax = figure2_axes[2 * column], figure2_axes[2 * column + 1]
    lines = {line.get_label(): line for line in curves.get_lines()}
    assert {label: line.get_color() for label, line in lines.items()} == {
        "conv hull (7)": "tab:blue", "union (6)": "tab:red", "naive (5)": "tab:green"}  # the paper's colours
    eps1 = np.asarray(lines["conv hull (7)"].get_xdata(), dtype=float)
    hull, union, naive = (np.asarray(lines[k].get_ydata(), dtype=float) for k in ("conv hull (7)", "union (6)",
                                                                                 "naive (5)"))
    assert (eps1[0], eps1[-1]) == pytest.approx((1.0, d))  # eps1 from eps_inf to d eps_inf
    assert np.all(np.diff(eps1) > 0)
    # at eps1 = eps_inf, B_1 lies in B_inf; at eps1 = d eps_inf, B_inf lies in B_1 (l2 inradius eps1 / sqrt(d))
    for values in (hull, union, naive):
        assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(math.sqrt(d))
    # conv(B_1 u B_inf) contains the union; (5) is a lower bound on (6)
    assert np.all(hull >= union - 1e-9) and np.all(union >= naive - 1e-9)
    assert hull[len(hull) // 2] > 2 * union[len(union) // 2]
    # the ratio panel: (7) / max((5), (6)), peaking at sqrt(d) with the published value
    ratio_line, marker = ratio_ax.get_lines()
    ratio = np.asarray(ratio_line.get_ydata(), dtype=float)
    np.testing.assert_allclose(ratio, hull / np.maximum(union, naive), rtol=1e-12)
    # the marked maximum over integer eps1 (the paper's numbers): at the integer next to sqrt(d)
    x_int, y_int = (float(np.asarray(v, dtype=float).reshape(-1)[0]) for v in marker.get_data())
    assert x_int in (math.floor(math.sqrt(d)), math.ceil(math.sqrt(d)))
    assert round(y_int, 2) == PUBLISHED_PEAK[d] and f"{y_int:.2f} at {x_int:g}" in marker.get_label()
    # the curve peaks there too, slightly above the integers' maximum (measured: 3.825 at 27.5, 5.324 at 55.5)
    peak = int(ratio.argmax())
    assert eps1[peak] == pytest.approx(math.sqrt(d), rel=0.03)
    assert y_int <= ratio[peak] <= 1.01 * y_int


# ---- Figure 1: the balls in R^2 and R^3 ------------------------------------------------------

def union_inradius(eps1: float, eps_inf: float, directions: np.ndarray) -> float:
    """min over unit directions u of the union's radial function max(eps1 / |u|_1, eps_inf / |u|_inf)."""
    return float(np.min(np.maximum(eps1 / np.abs(directions).sum(1), eps_inf / np.abs(directions).max(1))))


def hull_inradius(eps1: float, eps_inf: float, d: int) -> float:
    """Distance from 0 to the nearest facet of conv(B_1 u B_inf), from scipy's facet equations."""
    return float(np.min(np.abs(ConvexHull(np.concatenate(ball_vertices(eps1, eps_inf, d))).equations[:, -1])))


def test_figure1_radii_and_balls():
    fig = draw_figure1(eps1_2d=1.5, eps1_3d=2.0, eps_inf=1.0)
    axes_2d, axes_3d = fig.axes[0::2], fig.axes[1::2]  # each column adds its R^2 panel, then its R^3 panel
    angles = np.linspace(0, 2 * np.pi, 200_001)
    circle = np.stack([np.cos(angles), np.sin(angles)], 1)
    sphere = np.random.default_rng(0).normal(size=(400_000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    expected_2d = {1: union_inradius(1.5, 1.0, circle), 3: hull_inradius(1.5, 1.0, 2)}
    expected_3d = {1: union_inradius(2.0, 1.0, sphere), 3: hull_inradius(2.0, 1.0, 3)}
    assert expected_2d[3] > expected_2d[1] and expected_3d[3] > expected_3d[1]
    for column, ax in enumerate(axes_2d):
        polygons = [sorted(map(tuple, np.round(p.get_xy()[:-1], 9))) for p in ax.patches if isinstance(p, Polygon)]
        l1 = sorted(map(tuple, ball_vertices(1.5, 1.0, 2)[0]))
        linf = sorted(map(tuple, ball_vertices(1.5, 1.0, 2)[1]))
        assert l1 in polygons and linf in polygons  # B_1 and B_inf in every panel
        if column >= 2:  # the hull: the octagon of the 4 tips of B_1 and the 4 corners of B_inf
            assert sorted(l1 + linf) in polygons
        circles = [p.radius for p in ax.patches if isinstance(p, Circle)]
        assert len(circles) == (column in (1, 3))
        if column == 1:  # the sampled radial function's minimum is above the true one by < 2e-5 (grid step)
            assert expected_2d[1] * (1 - 2e-5) <= circles[0] <= expected_2d[1]
        if column == 3:
            assert circles[0] == pytest.approx(expected_2d[3], rel=1e-9)
    for column in (1, 3):  # the spheres' radii, printed under the R^3 panels
        title = axes_3d[column].get_title()
        assert float(title.split()[-1]) == pytest.approx(expected_3d[column], abs=2e-3), title


@pytest.mark.parametrize("d", [2, 3])
def test_ball_vertices(d):
    l1, linf = ball_vertices(1.5, 1.0, d)
    assert l1.shape == (2 * d, d) and linf.shape == (2**d, d)
    assert np.allclose(np.abs(l1).sum(axis=1), 1.5) and np.allclose(np.abs(linf), 1.0)


# ---- certify.py's plots show the curves they are given ---------------------------------------

def test_robustness_curves_plot_the_given_values(tmp_path):
    eps = np.linspace(0, 0.3, 7)
    curves = {
        "l1": {"eps": eps, "certified": np.linspace(0.1, 0.9, 7), "empirical": np.linspace(0.05, 0.5, 7)},
        "linf": {"eps": eps, "empirical": np.linspace(0.05, 0.5, 7)},
    }
    fig = draw_robustness_curves(curves)
    assert [ax.get_title() for ax in fig.axes] == [r"$\ell_1$", r"$\ell_\infty$"]
    for ax, curve in zip(fig.axes, curves.values()):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"certified (upper bound)", "attacks (lower bound)"} & set(lines)
        for key, label, style in (("certified", "certified (upper bound)", "-"),
                                  ("empirical", "attacks (lower bound)", "--")):
            assert (key in curve) == (label in lines)
            if key in curve:
                np.testing.assert_array_equal(lines[label].get_xdata(), eps)
                np.testing.assert_array_equal(lines[label].get_ydata(), curve[key])
                assert lines[label].get_linestyle() == style
    path = plot_robustness_curves(curves, tmp_path / "sub" / "robust.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_universal_curve_plots_one_line_per_p():
    eps = np.linspace(0, 1, 7)
    errors = {p: np.linspace(0.0, 1.0, 7) ** (1 / p if p != math.inf else 0.1) for p in [1, 1.5, 2, math.inf]}
    (ax,) = draw_universal_curve(eps, errors).axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["$p=1$", "$p=1.5$", "$p=2$", r"$p=\infty$"]
    for line, values in zip(lines, errors.values()):
        np.testing.assert_array_equal(line.get_xdata(), eps)
        np.testing.assert_array_equal(line.get_ydata(), values)
