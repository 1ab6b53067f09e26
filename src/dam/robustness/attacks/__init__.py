"""Standard attacks (Foolbox 3) and the checks that tell real robustness from gradient masking.

The attacks come from Foolbox, an optional extra: ``pip install "dam[attacks]"``.  Everything here takes
models with this package's contract (images in [0, 1] shaped (B, 784) or (B, 1, 28, 28)); DAMs are
attacked through their logits, :func:`dam.model.as_logits` (a DAM's pre-tanh scores).  The suite that runs
them over run folders, worst case per image: :class:`dam.robustness.attacks.runner.AttackSuite` and
:func:`dam.robustness.attacks.runner.run_attacks`.
"""

from dam.robustness.attacks.accuracy import RobustnessTable, evaluation_subset, robust_accuracy
from dam.robustness.attacks.autoattack import APGDCE, APGDT, FABT, AutoAttack, Square
from dam.robustness.attacks.standard import FGSM, PGD, Attack, AttackResult, HopSkipJump, Transfer, require_foolbox

__all__ = [
    "APGDCE",
    "APGDT",
    "FABT",
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "HopSkipJump",
    "RobustnessTable",
    "Square",
    "Transfer",
    "evaluation_subset",
    "require_foolbox",
    "robust_accuracy",
]
