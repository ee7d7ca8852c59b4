"""Plots: the paper's Figures 1 and 2, and robust-error curves for certify.py.

``python -m mmru.figures [--out DIR]`` writes ``figure1.png`` (the l_1- and l_inf-balls, the
largest l_2-ball inside their union, eq (6), their convex hull and the largest l_2-ball inside
it, eq (7), in R^2 and R^3) and ``figure2.png`` (eqs (7), (6), (5) for p = 2, eps_inf = 1,
d = 784 and 3072, and the ratio of (7) to max((5), (6))).

Figures are built on ``matplotlib.figure.Figure`` directly, so nothing here touches pyplot's
global state or backend; PNGs are rendered by Agg. Each ``draw_*`` function returns the Figure
(so tests can read the plotted data back), and its path-taking twin saves it as a PNG.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Polygon
from scipy.spatial import ConvexHull

from mmru.balls import hull_bound, naive_bound, union_bound

# the paper's colours: l_1-ball blue, l_inf-ball black, l_2-balls red, hull green;
# in Figure 2 eq (7) blue, eq (6) red, eq (5) green
L1_COLOR, LINF_COLOR, L2_COLOR, HULL_COLOR = "tab:blue", "black", "tab:red", "tab:green"
NORM_LABELS = {"l1": r"$\ell_1$", "l2": r"$\ell_2$", "linf": r"$\ell_\infty$"}


def ball_vertices(eps1: float, eps_inf: float, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of B_1 (+-eps1 e_i) and of B_inf ({+-eps_inf}^d), as in the proof of Theorem 3.1."""
    l1 = np.concatenate([eps1 * np.eye(d), -eps1 * np.eye(d)])
    linf = eps_inf * np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    return l1, linf


def _polygon(points: np.ndarray) -> np.ndarray:
    """Corners of the convex hull of 2-D points, in counter-clockwise order."""
    return points[ConvexHull(points).vertices]


def _polytope_faces(points: np.ndarray) -> list[np.ndarray]:
    """Facets of the convex hull of 3-D points as ordered polygons (coplanar triangles merged)."""
    hull = ConvexHull(points)
    faces: dict[tuple[float, ...], set[int]] = {}
    for simplex, eq in zip(hull.simplices, hull.equations):
        faces.setdefault(tuple(np.round(eq, 9)), set()).update(simplex)
    polygons = []
    for eq, idx in faces.items():
        corners = points[sorted(idx)]
        centre, normal = corners.mean(axis=0), np.array(eq[:3])
        a = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
        b = np.cross(normal, a)
        angle = np.arctan2((corners - centre) @ b, (corners - centre) @ a)
        polygons.append(corners[np.argsort(angle)])
    return polygons


def _draw_2d(ax, eps1: float, eps_inf: float, column: int) -> None:
    l1, linf = ball_vertices(eps1, eps_inf, 2)
    if column >= 2:
        ax.add_patch(Polygon(_polygon(np.concatenate([l1, linf])), closed=True,
                             facecolor=HULL_COLOR, alpha=0.35, edgecolor=HULL_COLOR, lw=1.5))
    ax.add_patch(Polygon(_polygon(l1), closed=True, fill=False, edgecolor=L1_COLOR, lw=1.5))
    ax.add_patch(Polygon(_polygon(linf), closed=True, fill=False, edgecolor=LINF_COLOR, lw=1.5))
    if column in (1, 3):
        radius = float((union_bound if column == 1 else hull_bound)(eps1, eps_inf, 2, 2))
        ax.add_patch(Circle((0, 0), radius, facecolor=L2_COLOR, alpha=0.45, edgecolor=L2_COLOR))
        ax.set_xlabel(f"$\\ell_2$ radius {radius:.3f}")
    lim = 1.1 * max(eps1, eps_inf)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])


def _draw_3d(ax, eps1: float, eps_inf: float, column: int) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    l1, linf = ball_vertices(eps1, eps_inf, 3)
    solids = [(l1, L1_COLOR, 0.08), (linf, LINF_COLOR, 0.05)]
    if column >= 2:
        solids.append((np.concatenate([l1, linf]), HULL_COLOR, 0.25))
    for points, color, alpha in solids:
        ax.add_collection3d(Poly3DCollection(_polytope_faces(points), facecolor=color, alpha=alpha,
                                             edgecolor=color, linewidths=0.6))
    if column in (1, 3):
        radius = float((union_bound if column == 1 else hull_bound)(eps1, eps_inf, 2, 3))
        u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 40), np.linspace(0, np.pi, 20))
        ax.plot_surface(radius * np.cos(u) * np.sin(v), radius * np.sin(u) * np.sin(v),
                        radius * np.cos(v), color=L2_COLOR, alpha=0.6, linewidth=0)
        ax.set_title(f"$\\ell_2$ radius {radius:.3f}", fontsize=9, y=-0.05)
    lim = max(eps1, eps_inf)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim), xticks=[], yticks=[], zticks=[])
    ax.set_box_aspect((1, 1, 1))


def figure1(path: str | Path, eps1_2d: float = 1.5, eps1_3d: float = 2.0, eps_inf: float = 1.0) -> Path:
    """Figure 1 (:func:`draw_figure1`) as a PNG at ``path``."""
    return _save(draw_figure1(eps1_2d, eps1_3d, eps_inf), path)


def draw_figure1(eps1_2d: float = 1.5, eps1_3d: float = 2.0, eps_inf: float = 1.0) -> Figure:
    """Figure 1: B_1 and B_inf; the largest l_2-ball in their union (6); the convex hull; the
    largest l_2-ball in the hull (7). Top row R^2, bottom row R^3 (eps1 in (eps_inf, d eps_inf))."""
    fig = Figure(figsize=(12, 6.4), layout="constrained")
    titles = [r"$B_1$ (blue), $B_\infty$ (black)", r"$\ell_2$-ball in $B_1\cup B_\infty$",
              r"conv$(B_1\cup B_\infty)$", r"$\ell_2$-ball in the hull"]
    for column, title in enumerate(titles):
        ax = fig.add_subplot(2, 4, column + 1)
        _draw_2d(ax, eps1_2d, eps_inf, column)
        ax.set_title(title, fontsize=10)
        _draw_3d(fig.add_subplot(2, 4, column + 5, projection="3d"), eps1_3d, eps_inf, column)
    fig.suptitle(f"$d=2$: $\\epsilon_1={eps1_2d:g}$, $d=3$: $\\epsilon_1={eps1_3d:g}$, "
                 f"$\\epsilon_\\infty={eps_inf:g}$")
    return fig


def figure2(path: str | Path, dims: Sequence[int] = (784, 3072), eps_inf: float = 1.0,
            p: float = 2.0, points: int = 20_001) -> Path:
    """Figure 2 (:func:`draw_figure2`) as a PNG at ``path``."""
    return _save(draw_figure2(dims, eps_inf, p, points), path)


def draw_figure2(dims: Sequence[int] = (784, 3072), eps_inf: float = 1.0, p: float = 2.0,
                 points: int = 20_001) -> Figure:
    """Figure 2: min l_p-norm outside the hull (7), the union (6) and the naive bound (5) over
    eps1 in [eps_inf, d eps_inf], and the ratio of (7) to max((5), (6)), per dimension d."""
    fig = Figure(figsize=(4 * len(dims) * 2, 3.6), layout="constrained")
    for i, d in enumerate(dims):
        # geometric grid: the interesting part (the ratio peaks near sqrt(d) eps_inf) is small eps1
        eps1 = torch.logspace(0, math.log10(d), points, dtype=torch.float64) * eps_inf
        hull, union, naive = (f(eps1, eps_inf, p, d) for f in (hull_bound, union_bound, naive_bound))
        ax = fig.add_subplot(1, 2 * len(dims), 2 * i + 1)
        for values, color, label in [(hull, L1_COLOR, "conv hull (7)"), (union, L2_COLOR, "union (6)"),
                                     (naive, HULL_COLOR, "naive (5)")]:
            ax.plot(eps1, values, color=color, label=label)
        ax.set(xscale="log", xlabel=r"$\epsilon_1$", ylabel=rf"min $\ell_{{{p:g}}}$-norm",
               title=f"d = {d}, $\\epsilon_\\infty$ = {eps_inf:g}")
        ax.legend(fontsize=8)
        ratio = hull / torch.maximum(union, naive)
        ints = torch.arange(1, d + 1, dtype=torch.float64) * eps_inf
        int_ratio = hull_bound(ints, eps_inf, p, d) / torch.maximum(
            union_bound(ints, eps_inf, p, d), naive_bound(ints, eps_inf, p, d))
        best = int(int_ratio.argmax())
        ax = fig.add_subplot(1, 2 * len(dims), 2 * i + 2)
        ax.plot(eps1, ratio, color="tab:purple")
        ax.plot(ints[best], int_ratio[best], "o", color="black",
                label=f"max over integers: {float(int_ratio[best]):.2f} at {float(ints[best]):g}")
        ax.set(xscale="log", xlabel=r"$\epsilon_1$", ylabel="(7) / max((5), (6))", title=f"ratio, d = {d}")
        ax.legend(fontsize=8)
    return fig


def plot_robustness_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """The robustness curves (:func:`draw_robustness_curves`) as a PNG at ``path``."""
    return _save(draw_robustness_curves(curves), path)


def draw_robustness_curves(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Robust test error vs eps, one panel per norm.

    ``curves[norm]`` (norm e.g. "l1", "l2", "linf") holds ``"eps"`` and at least one of
    ``"certified"`` (fraction of points not certified at eps: an upper bound on the robust error,
    solid) and ``"empirical"`` (fraction broken by attacks: a lower bound, dashed); an optional
    ``"xlabel"`` replaces eps on the x axis (the union curve's scale t).
    """
    fig = Figure(figsize=(4 * len(curves), 3.4), layout="constrained")
    for i, (norm, curve) in enumerate(curves.items()):
        ax = fig.add_subplot(1, len(curves), i + 1)
        eps = np.asarray(curve["eps"], dtype=float)
        if "certified" in curve:
            ax.plot(eps, np.asarray(curve["certified"], dtype=float), "-", color="tab:blue",
                    label="certified (upper bound)")
        if "empirical" in curve:
            ax.plot(eps, np.asarray(curve["empirical"], dtype=float), "--", color="tab:red",
                    label="attacks (lower bound)")
        ax.set(xlabel=curve.get("xlabel", r"$\epsilon$"), ylabel="robust error", ylim=(0, 1),
               title=NORM_LABELS.get(norm, norm))
        ax.legend(fontsize=8)
    return fig


def plot_universal_curve(eps_grid: Sequence[float], errors_by_p: Mapping[float, Sequence[float]],
                         path: str | Path) -> Path:
    """The Theorem 4.1 curves (:func:`draw_universal_curve`) as a PNG at ``path``."""
    return _save(draw_universal_curve(eps_grid, errors_by_p), path)


def draw_universal_curve(eps_grid: Sequence[float], errors_by_p: Mapping[float, Sequence[float]]) -> Figure:
    """Certified robust error vs eps from Theorem 4.1, eq (13), one line per p."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    eps = np.asarray(eps_grid, dtype=float)
    for p, errors in errors_by_p.items():
        label = r"$p=\infty$" if math.isinf(float(p)) else f"$p={float(p):g}$"
        ax.plot(eps, np.asarray(errors, dtype=float), label=label)
    ax.set(xlabel=r"$\epsilon$", ylabel="certified robust error (Thm 4.1)", ylim=(0, 1))
    ax.legend(fontsize=8)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Write the paper's Figures 1 and 2 as PNGs.")
    parser.add_argument("--out", default="figures", help="output directory (default: figures)")
    out = Path(parser.parse_args(argv).out)
    written = [figure1(out / "figure1.png"), figure2(out / "figure2.png")]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
