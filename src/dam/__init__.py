"""dam: Dense Associative Memory classifiers and their robustness to adversarial and rubbish inputs."""

from dam.data import DatasetError, load_dataset, train_val_split
from dam.model import CheckpointError, DAMConfig, DenseAssociativeMemory, InputError
from dam.training import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DAMConfig",
    "DatasetError",
    "DenseAssociativeMemory",
    "InputError",
    "TrainConfig",
    "__version__",
    "load_dataset",
    "train",
    "train_val_split",
]
