"""The paper's probes of trained models (sections 3-5): rubbish images, decision-boundary images, confidence."""

from dam.probes.boundary import BoundaryResult, BoundarySearch
from dam.probes.confidence import PAPER_BETA_SM, calibrate_beta_sm, confidence, confidence_binned_error
from dam.probes.gradient import class_objective
from dam.probes.rubbish import RubbishResult, RubbishSearch
from dam.probes.transfer import adversarial_table, rubbish_table, save_table

__all__ = [
    "PAPER_BETA_SM",
    "BoundaryResult",
    "BoundarySearch",
    "RubbishResult",
    "RubbishSearch",
    "adversarial_table",
    "calibrate_beta_sm",
    "class_objective",
    "confidence",
    "confidence_binned_error",
    "rubbish_table",
    "save_table",
]
