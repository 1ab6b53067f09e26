"""dam: Dense Associative Memory classifiers and their robustness to adversarial and rubbish inputs.

The layers, each depending only on those before it: ``dam.data`` -> ``dam.model`` (DAM_n) and
``dam.baselines`` (MLPs), ``dam.runs`` (run folders) -> ``dam.training`` -> ``dam.probes`` ->
``dam.robustness`` -> ``dam.experiments`` (the reproduction and its report) -> ``dam.cli``.
"""

import importlib.abc
import sys

from dam.baselines import MLPClassifier, MLPConfig
from dam.data import load_dataset, seeded_subset, train_val_split
from dam.errors import CheckpointError, DamError, DatasetError, InputError
from dam.model import DAMConfig, DenseAssociativeMemory, as_logits
from dam.runs import load_model
from dam.training import MLPTrainConfig, TrainConfig, train, train_mlp
from dam.version import __version__

__all__ = [
    "CheckpointError",
    "DAMConfig",
    "DamError",
    "DatasetError",
    "DenseAssociativeMemory",
    "InputError",
    "MLPClassifier",
    "MLPConfig",
    "MLPTrainConfig",
    "TrainConfig",
    "__version__",
    "as_logits",
    "load_dataset",
    "load_model",
    "seeded_subset",
    "train",
    "train_mlp",
    "train_val_split",
]

# Modules of earlier versions and where their contents went: importing one says so in one line.
MOVED = {
    "dam.loading": "dam.runs (load_model is also dam.load_model)",
    "dam.runinfo": "dam.environment",
    "dam.extras": "dam.errors",
    "dam.presets": "dam.training.presets",
    "dam.evaluate": "dam.training.evaluate",
    "dam.adversarial_training": "dam.robustness.adversarial_training",
    "dam.attacks": "dam.robustness.attacks (masking: dam.robustness.masking; logits: dam.as_logits)",
    "dam.detector": "dam.robustness.detector",
    "dam.detection": "dam.robustness.detector_sets",
    "dam.beyond": "dam.experiments.past_paper",
    "dam.reproduce": "dam.experiments.reproduce",
    "dam.report": "dam.experiments.report",
    "dam.cli_probes": "dam.cli.probes",
    "dam.cli_report": "dam.cli.report",
    "dam.cli_attacks": "dam.cli.attacks",
    "dam.cli_detect": "dam.cli.detect",
    "dam.cli_adversarial": "dam.cli.adversarial",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        for old, new in MOVED.items():
            if fullname == old or fullname.startswith(old + "."):
                raise ModuleNotFoundError(f"{fullname} moved in dam 0.2: see {new}", name=fullname)
        return None


sys.meta_path.append(_MovedModules())
