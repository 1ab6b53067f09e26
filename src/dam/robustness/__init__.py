"""Past the paper's own probes: standard attacks, gradient-masking checks, the junk detector, adversarial
fine-tuning.  Depends on data, the models, training and the probes; nothing below imports it."""

from dam.robustness.adversarial_training import AdversarialTrainConfig, adversarial_finetune
from dam.robustness.detector import JUNK, Detector

__all__ = ["JUNK", "AdversarialTrainConfig", "Detector", "adversarial_finetune"]
