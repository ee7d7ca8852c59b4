"""The published networks mmru ships (``zoo/``), recognised by the md5 of their files.

A certification of one of them is a row of the paper's own table: the report needs to know
which dataset and training scheme it belongs to and that it was trained at the paper's recipe
(100 epochs), which a model file alone does not say.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mmru.provenance import ROOT, file_md5

#: the authors' repository and the commit whose models/ folder held the files
SOURCE = "Croce & Hein 2020, github.com/fra31/mmr-universal@3eba567"
FOLDER = ROOT / "zoo" / "croce-hein-2020"


class Published(NamedTuple):
    file: str
    dataset: str
    regularizer: str
    paper_te: float  #: %, Table 1
    hyperparameters: str


PUBLISHED = {
    "ebe49345c826ff3b7234100b6b008ab2": Published("mmr_univ_mnist.mat", "mnist", "universal", 3.04,
                                                  "γ1 1.0, γ∞ 0.175, λ1 3, λ∞ 12"),
    "ab36cbedb39b2eca6beb29fa9abe0f3a": Published("mmr_univ_fmnist.mat", "fmnist", "universal", 18.57,
                                                  "γ1 1.0, γ∞ 0.15, λ1 3, λ∞ 40"),
    "0f77905e14296d43d5cca5caf3dd8d58": Published("mmr_univ_gts.mat", "gts", "universal", 15.98,
                                                  "γ1 6.0, γ∞ 6/255, λ1 3, λ∞ 12"),
    "047ccb0d7fbbfd8a1a571f5165962ad9": Published("mmr_univ_cifar10.mat", "cifar10", "universal", 46.96,
                                                  "γ1 6.0, γ∞ 6/255, λ1 1, λ∞ 6"),
}

#: the paper's training recipe, which produced every published file
PAPER_EPOCHS = 100


def model_file_run(path: str | Path, dataset: str, eps: dict) -> dict:
    """The run facts of a model file from elsewhere (certify.py model_file=): its name and md5, and, for a
    published network certified on its own dataset, its scheme, epochs and source."""
    md5 = file_md5(path)
    run = {"dataset": dataset, "eps": dict(eps), "regularizer": Path(path).name, "model_md5": md5}
    known = PUBLISHED.get(md5)
    if known is not None and known.dataset == dataset:
        run.update(regularizer=known.regularizer, epochs=PAPER_EPOCHS, source=f"{SOURCE}, {known.file}",
                   hyperparameters=known.hyperparameters)
    return run
