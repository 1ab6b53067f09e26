"""Training: the authors' algorithm for DAM_n, the MLP baselines, and the one loop both run through.

Layer: depends on data, the models and run folders; probes, robustness and experiments build on it.
"""

from dam.training.loop import Run, TrainData, Trainer, error_rate, fit, fit_runs, prepare_data
from dam.training.mlp import MLPTrainConfig, train_mlp
from dam.training.presets import preset, preset_names, schedule_names
from dam.training.rule import DAMTrainer, TrainConfig, dam_loss, minibatch_step, update_memories
from dam.training.stacked import StackedDAMs, train, train_many

__all__ = [
    "DAMTrainer",
    "MLPTrainConfig",
    "Run",
    "StackedDAMs",
    "TrainConfig",
    "TrainData",
    "Trainer",
    "dam_loss",
    "error_rate",
    "fit",
    "fit_runs",
    "minibatch_step",
    "prepare_data",
    "preset",
    "preset_names",
    "schedule_names",
    "train",
    "train_many",
    "train_mlp",
    "update_memories",
]
