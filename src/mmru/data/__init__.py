"""Datasets: the paper's four through torchvision, and the offline ``mnist5k``."""

from mmru.data.datamodule import DATASETS, RobustDataModule
from mmru.data.mnist5k import load_mnist5k
from mmru.data.torchvision_sets import DatasetUnavailable

__all__ = ["DATASETS", "DatasetUnavailable", "RobustDataModule", "load_mnist5k"]
