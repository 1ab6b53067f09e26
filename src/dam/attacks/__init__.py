"""Standard attacks (Foolbox 3) and the checks that tell real robustness from gradient masking.

The attacks come from Foolbox, an optional extra: ``pip install "dam[attacks]"``.  Everything here takes
models with this package's contract (images in [0, 1] shaped (B, 784) or (B, 1, 28, 28)); DAMs are
attacked through their pre-tanh scores (see :mod:`dam.attacks.logits`).
"""

from dam.attacks.evaluation import RobustnessTable, evaluation_subset, robust_accuracy
from dam.attacks.logits import attack_logits
from dam.attacks.masking import GradientHealth, gradient_health, masking_verdict
from dam.attacks.standard import FGSM, PGD, Attack, AttackResult, HopSkipJump, Transfer, require_foolbox

__all__ = [
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "GradientHealth",
    "HopSkipJump",
    "RobustnessTable",
    "Transfer",
    "attack_logits",
    "evaluation_subset",
    "gradient_health",
    "masking_verdict",
    "require_foolbox",
    "robust_accuracy",
]
