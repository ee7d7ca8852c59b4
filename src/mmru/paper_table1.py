"""The published Table 1 of Croce & Hein (MMR-Universal), as data for :mod:`mmru.report`.

Every figure is a percentage: test error (TE) on the full test set; lower (LB) and upper (UB)
bounds on the robust test error at the thresholds ε_p, on the first 1000 test points; and the
worst-case UB, the largest of the three UBs.
"""

from __future__ import annotations

from typing import NamedTuple

#: norms in Table 1's column order
NORMS = ("l1", "l2", "linf")

#: dataset key -> its name in the paper
DATASET_NAMES = {"mnist": "MNIST", "fmnist": "F-MNIST", "gts": "GTS", "cifar10": "CIFAR-10"}

#: datasets of ours with no row in the paper -> the paper's dataset they are compared with
PAPER_PROXY = {"mnist5k": "mnist"}

#: training scheme key (the regularizer config name) -> its label in the paper; table order
SCHEME_LABELS = {
    "none": "plain",
    "at_linf": "AT-l∞",
    "at_l2": "AT-l2",
    "at_union": "AT-(l1,l2,l∞)",
    "kw_linf": "KW-l∞",
    "kw_l2": "KW-l2",
    "mmr_linf": "MMR-l∞",
    "mmr_l2": "MMR-l2",
    "mmr_at_linf": "MMR+AT-l∞",
    "mmr_at_l2": "MMR+AT-l2",
    "universal": "MMR-Universal",
}

#: the thresholds ε_p of each dataset's block of the table (pixels in [0, 1])
EPS = {
    "mnist": {"l1": 1.0, "l2": 0.3, "linf": 0.1},
    "fmnist": {"l1": 1.0, "l2": 0.3, "linf": 0.1},
    "gts": {"l1": 3.0, "l2": 0.2, "linf": 4 / 255},
    "cifar10": {"l1": 2.0, "l2": 0.1, "linf": 2 / 255},
}


class PaperRow(NamedTuple):
    """One row of Table 1, in %."""

    te: float
    l1_lb: float
    l1_ub: float
    l2_lb: float
    l2_ub: float
    linf_lb: float
    linf_ub: float
    worst_ub: float

    def bounds(self, norm: str) -> tuple[float, float]:
        return getattr(self, f"{norm}_lb"), getattr(self, f"{norm}_ub")


def _rows(*rows: tuple[float, ...]) -> dict[str, PaperRow]:
    return {scheme: PaperRow(*row) for scheme, row in zip(SCHEME_LABELS, rows, strict=True)}


#: TABLE1[dataset][scheme]; schemes in the order of :data:`SCHEME_LABELS`
TABLE1: dict[str, dict[str, PaperRow]] = {
    "mnist": _rows(
        (0.85, 2.2, 100, 3.0, 100, 73.9, 100, 100),
        (0.82, 1.7, 100, 1.6, 100, 3.0, 100, 100),
        (0.87, 1.8, 100, 2.1, 100, 19.3, 100, 100),
        (0.96, 2.2, 100, 1.9, 100, 5.8, 100, 100),
        (1.21, 2.6, 100, 2.8, 100, 4.4, 4.4, 100),
        (1.11, 2.1, 100, 2.1, 6.6, 10.3, 10.3, 100),
        (1.65, 6.4, 100, 4.7, 100, 6.0, 6.0, 100),
        (2.57, 4.3, 62.3, 6.3, 14.3, 77.1, 99.9, 99.9),
        (1.19, 3.3, 100, 2.4, 100, 3.6, 3.6, 100),
        (1.73, 3.1, 99.9, 3.6, 12.1, 15.1, 76.8, 99.9),
        (3.04, 5.2, 20.8, 5.8, 10.4, 12.4, 12.4, 20.8),
    ),
    "fmnist": _rows(
        (9.32, 25.6, 100, 56.3, 100, 96.0, 100, 100),
        (11.54, 19.0, 100, 16.2, 100, 21.5, 73.0, 100),
        (8.10, 15.4, 100, 19.8, 100, 91.9, 100, 100),
        (15.11, 22.4, 100, 19.7, 100, 28.9, 100, 100),
        (21.73, 34.2, 100, 29.2, 99.2, 32.4, 32.4, 100),
        (13.08, 15.8, 19.8, 15.6, 19.9, 66.7, 86.8, 86.8),
        (14.51, 26.7, 100, 22.2, 100, 33.2, 33.6, 100),
        (12.85, 18.2, 39.4, 23.7, 33.2, 94.8, 100, 100),
        (14.52, 24.3, 100, 21.7, 100, 26.6, 30.7, 100),
        (13.40, 17.2, 55.4, 19.5, 37.8, 64.4, 99.1, 99.1),
        (18.57, 25.0, 52.4, 23.9, 37.4, 43.5, 44.3, 52.4),
    ),
    "gts": _rows(
        (6.77, 26.0, 100, 34.5, 99.3, 63.8, 98.4, 100),
        (6.83, 60.3, 100, 23.0, 99.2, 30.2, 82.3, 100),
        (8.76, 35.9, 100, 26.4, 98.4, 55.3, 97.1, 100),
        (8.80, 39.3, 100, 22.2, 93.7, 38.4, 79.4, 100),
        (15.57, 84.0, 100, 38.9, 77.7, 36.1, 36.6, 100),
        (14.35, 42.6, 100, 29.6, 35.3, 56.4, 63.0, 100),
        (13.32, 60.5, 99.6, 39.9, 41.7, 49.5, 49.6, 99.6),
        (14.21, 51.2, 80.4, 34.8, 36.6, 61.3, 63.6, 80.4),
        (14.89, 81.9, 100, 37.3, 44.7, 38.3, 38.4, 100),
        (15.34, 45.2, 84.3, 31.9, 33.8, 55.4, 60.2, 84.3),
        (15.98, 47.8, 51.5, 32.2, 34.6, 47.0, 47.0, 51.5),
    ),
    "cifar10": _rows(
        (23.29, 61.0, 100, 48.9, 100, 87.8, 100, 100),
        (27.06, 39.6, 100, 32.2, 99.2, 52.5, 88.5, 100),
        (25.84, 41.9, 100, 34.4, 99.9, 58.8, 99.4, 100),
        (35.41, 46.6, 100, 41.2, 88.2, 55.3, 76.8, 100),
        (38.91, 51.9, 100, 39.6, 66.1, 46.6, 48.0, 100),
        (40.24, 46.0, 100, 43.5, 49.3, 53.6, 54.7, 100),
        (34.61, 53.5, 100, 41.4, 68.4, 57.5, 61.0, 100),
        (40.93, 57.4, 98.0, 49.0, 56.3, 70.6, 86.1, 98.0),
        (35.38, 50.6, 100, 40.0, 84.7, 47.9, 54.2, 100),
        (37.78, 48.4, 99.9, 44.6, 54.2, 59.6, 74.1, 99.9),
        (46.96, 54.7, 63.4, 50.9, 53.6, 63.8, 63.8, 63.8),
    ),
}


def paper_row(dataset: str, scheme: str) -> tuple[str, PaperRow] | None:
    """The published row a run of ``(dataset, scheme)`` compares with, and that row's dataset."""
    source = PAPER_PROXY.get(dataset, dataset)
    row = TABLE1.get(source, {}).get(scheme)
    return (source, row) if row is not None else None
