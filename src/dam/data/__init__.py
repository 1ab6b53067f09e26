"""Data: IDX files, MNIST and Fashion-MNIST, found locally or downloaded and verified."""

from dam.data.datasets import VALIDATION_SIZE, load_dataset, locate_dataset, train_val_split
from dam.data.idx import DatasetError, parse_idx, read_idx
from dam.data.sources import DATASETS, cache_dir, download_dataset, download_file
from dam.data.subsets import seeded_subset, subset_indices

__all__ = [
    "DATASETS",
    "VALIDATION_SIZE",
    "DatasetError",
    "cache_dir",
    "download_dataset",
    "download_file",
    "load_dataset",
    "locate_dataset",
    "parse_idx",
    "read_idx",
    "seeded_subset",
    "subset_indices",
    "train_val_split",
]
