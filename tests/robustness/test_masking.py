from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from dam.robustness.attacks import PGD, HopSkipJump, RobustnessTable, robust_accuracy
from dam.robustness.attacks.standard import AttackResult
from dam.robustness.masking import GradientHealth, gradient_health, masking_verdict
from dam.runs import load_model


class Saturating(nn.Module):
    """``base`` with its logits scaled by 1e4: the same decisions, but the softmax saturates, so the
    cross-entropy gradient (p - onehot) is exactly zero on every confidently right image (as with
    defensive distillation's high temperature)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, images: Tensor) -> Tensor:
        return 1e4 * self.base(images)


def _table(
    white: list[float], black: list[float] | None, transfer: list[float] | None = None, norm: str = "linf", model="m"
) -> RobustnessTable:
    t = RobustnessTable(model, norm, [0.1, 0.3], 100, 0.98)
    t.attacks["pgd"], t.gradient_free["pgd"] = white, False
    if black is not None:
        t.attacks["hopskipjump"], t.gradient_free["hopskipjump"] = black, True
    if transfer is not None:
        t.attacks["transfer:src"], t.gradient_free["transfer:src"] = transfer, True
    t.worst_case = [min(v) for v in zip(*t.attacks.values(), strict=True)]
    return t


def test_verdict_rules_on_tables():
    healthy = [_healthy()]
    assert not masking_verdict(_table([0.8, 0.3], [0.82, 0.35]), healthy)["masking_suspected"]
    masked = masking_verdict(_table([0.8, 0.3], [0.4, 0.1]), healthy)
    assert masked["masking_suspected"] and "decision-based" in masked["verdict"] and "0.1" in masked["verdict"]
    assert masking_verdict(_table([0.8, 0.3], [0.85, 0.3], transfer=[0.5, 0.3]), healthy)["masking_suspected"]
    assert "cannot be ruled out" in masking_verdict(_table([0.8, 0.3], None), healthy)["verdict"]
    # tables like these (no per-image record, as results of dam 0.7 and older) say how they were compared
    assert "compared by robust accuracy only" in masking_verdict(_table([0.8, 0.3], [0.8, 0.3]), healthy)["verdict"]
    # a norm without gradient-free attacks is said to be unchecked, not cleared
    partial = masking_verdict([_table([0.8, 0.3], [0.8, 0.3]), _table([0.9, 0.8], None, norm="l2")], healthy)
    assert (
        not partial["masking_suspected"]
        and "not checked in l2" in partial["verdict"]
        and "in linf" in partial["verdict"]
    )
    # bad gradients alone: flagged for them, without claiming a gradient-free attack did better
    sick = masking_verdict(_table([0.8, 0.3], [0.8, 0.3]), [GradientHealth("float32", 100, 0.5, 0.0)])
    assert sick["masking_suspected"] and "50% of input gradients" in sick["verdict"]
    assert "overstate its robustness by" not in sick["verdict"]
    # a gap in any norm's table counts, and the verdict names it
    both = [_table([0.8, 0.3], [0.8, 0.3]), _table([0.9, 0.8], None, transfer=[0.9, 0.5], norm="l2")]
    verdict = masking_verdict(both, healthy)
    assert verdict["masking_suspected"] and "l2 eps 0.3" in verdict["verdict"] and "30.0 points" in verdict["verdict"]
    with pytest.raises(ValueError, match="one model"):
        masking_verdict([_table([0.8], None), _table([0.8], None, model="other")], healthy)


def test_each_reason_is_given_once_and_square_is_said_to_add_not_to_leave():
    t = _table([0.8, 0.3], [0.8, 0.3])
    t.attacks["apgd-t"], t.gradient_free["apgd-t"] = [0.5, 0.1], False  # cross-entropy overstates by 30 points
    t.attacks["square (on survivors)"], t.gradient_free["square (on survivors)"] = [0.9, 0.9], True
    t.extra_broken["square (on survivors)"] = [0.2, 0.0]  # broke 20 points the gradient attacks left
    verdict = masking_verdict(t, [_healthy()])
    assert verdict["masking_suspected"] and verdict["unchecked"] == []
    text = verdict["verdict"]
    assert "square (on survivors) broke 20.0 points of images that no gradient attack had broken" in text
    assert "leaves 30.0% robust accuracy" not in text  # (0.5 - 0.2 is no attack's robust accuracy)
    assert text.count("targeted APGD on the DLR loss leaves") == 1  # the cross-entropy reason, not repeated


def test_the_cross_entropy_gap_is_called_starvation_only_where_pgd_ends_at_the_dead_end():
    t = _table([0.8, 0.3], [0.8, 0.3])
    t.attacks["apgd-t"], t.gradient_free["apgd-t"] = [0.5, 0.1], False
    starved = masking_verdict(t, [_healthy()], {"linf": [0.9, 0.9]})
    assert starved["ce_overstates"] and not starved["masking_suspected"]
    dead_end = starved["verdict"]
    assert "are starved" in dead_end and "90% of PGD's end points" in dead_end
    live = masking_verdict(t, [_healthy()], {"linf": [0.0, 0.0]})["verdict"]  # DAM_2: a gap, no dead end
    assert "are starved" not in live and "fall short of the DLR loss, though not at the dead end" in live
    assert "0% of PGD's end points" in live
    assert "are starved" in masking_verdict(t, [_healthy()])["verdict"]  # unmeasured: both causes named


def _healthy():
    return GradientHealth("float32", 100, 0.0, 0.0)


def test_saturating_model_is_flagged_and_the_healthy_one_is_not(mlp_run, test_subset):
    base = load_model(mlp_run)
    x, y = test_subset
    health = gradient_health(base, x, y)
    assert health.zero_fraction == 0 and health.nonfinite_fraction == 0
    saturating = Saturating(base)
    sick = [gradient_health(saturating, x, y, dtype) for dtype in (torch.float32, torch.float64)]
    assert all(h.zero_fraction > 0.5 for h in sick)
    eps = [0.15, 0.3]
    hsj = HopSkipJump(saturating, eps, steps=6, initial_gradient_eval_steps=20, max_gradient_eval_steps=50)
    attacks = [PGD(saturating, eps, steps=10, random_start=False), hsj]
    table, _ = robust_accuracy(saturating, "saturating", x, y, attacks)
    # PGD cannot move without gradient; the decision-based attack needs none
    assert table.attacks["pgd"][1] == table.clean_accuracy
    assert table.attacks["hopskipjump"][1] < table.attacks["pgd"][1] - 0.3
    verdict = masking_verdict(table, sick)
    assert verdict["masking_suspected"]
    assert "zero or non-finite" in verdict["verdict"] and "decision-based attack" in verdict["verdict"]


def test_verdict_does_not_depend_on_the_order_attacks_are_listed_in():
    """A result reused from disk has its attacks in the file's (sorted) order: the verdict, re-derived from it,
    names the same strongest and weakest attacks on a tie as when it was first given."""
    table = _table([0.5, 0.1], [0.7, 0.3])
    table.attacks["fgsm"], table.gradient_free["fgsm"] = [0.5, 0.2], False  # tied with PGD at eps 0.1
    reordered = RobustnessTable.from_json({**table.to_json(), "attacks": dict(sorted(table.attacks.items()))})
    first, again = masking_verdict(table, [_healthy()]), masking_verdict(reordered, [_healthy()])
    assert first == again
    assert first["strongest"]["linf"]["attack"] == "pgd"  # the stronger at the other budget


class Scripted:
    """An attack that breaks the images it is told to (at the one budget 0.1): the masking check's input
    without the cost of a real attack."""

    norm, epsilons = "linf", [0.1]

    def __init__(self, name: str, broken: list[int], gradients: bool) -> None:
        self.name, self.broken, self.uses_gradients = name, broken, gradients

    def __call__(self, images: Tensor, labels: Tensor) -> AttackResult:
        success = torch.zeros(1, len(images), dtype=torch.bool)
        success[0, self.broken] = True
        return AttackResult(self.name, "linf", [0.1], images[None].clone(), success, torch.zeros(1, len(images)), 1.0)

    def describe(self) -> dict:
        return {"attack": self.name, "gradients": self.uses_gradients}


def test_gradient_free_attacks_are_weighed_image_by_image():
    """Of 100 images PGD and FGSM break 40 each, different ones (60% robust accuracy each, 20% together);
    HopSkipJump breaks 45, 10 of them images both gradient attacks left.  Its robust accuracy (55%) is within
    the noise of theirs, yet it found what they missed: masking is flagged.  A gradient attack that breaks
    those images later clears it."""
    torch.manual_seed(0)
    model = nn.Linear(784, 10)
    x = torch.rand(100, 784)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image right before the attacks
    attacks = [Scripted("pgd", list(range(40)), True), Scripted("fgsm", list(range(40, 80)), True),
               Scripted("hopskipjump", [*range(5, 40), *range(80, 90)], False)]  # fmt: skip
    lines: list[str] = []
    table, _ = robust_accuracy(model, "m", x, y, attacks, log=lines.append)  # a job's log= gets every attack
    assert [line.split(":")[0] for line in lines] == ["  m, linf pgd", "  m, linf fgsm", "  m, linf hopskipjump"]
    # 5 points of robust accuracy apart: within two standard errors on 100 images (9.8 points)
    assert table.attacks["fgsm"][0] - table.attacks["hopskipjump"][0] == pytest.approx(0.05)
    assert table.gradient_worst_case == pytest.approx([0.2]) and table.worst_case == pytest.approx([0.1])
    assert table.beyond_gradients == {"decision-based": pytest.approx([0.1])}
    verdict = masking_verdict(table, [_healthy()])
    assert verdict["masking_suspected"] and "compared by robust accuracy only" not in verdict["verdict"]
    assert "hopskipjump broke 10.0 points of images that no gradient attack had broken" in verdict["verdict"]
    assert "gradient attacks leave 20.0%" in verdict["verdict"]
    # the per-image record survives the JSON a result is kept in, and the verdict re-derived from it is the same
    assert masking_verdict(RobustnessTable.from_json(table.to_json()), [_healthy()]) == verdict
    # a gradient attack that runs after HopSkipJump (AutoAttack's attacks do) and breaks those images clears it
    table, _ = robust_accuracy(model, "m", x, y, [*attacks, Scripted("apgd-t", list(range(80, 90)), True)])
    assert table.beyond_gradients == {"decision-based": [0.0]}
    assert not masking_verdict(table, [_healthy()])["masking_suspected"]
    # under the threshold what they broke beyond the gradient attacks is said, never called noise: here 4 images
    table, _ = robust_accuracy(model, "m", x, y, [*attacks, Scripted("apgd-t", list(range(80, 86)), True)])
    verdict = masking_verdict(table, [_healthy()])
    assert not verdict["masking_suspected"] and "noise" not in verdict["verdict"]
    assert (
        "broke, each kind on its own, at most 4.0 points of robust accuracy among the images every gradient attack"
        in verdict["verdict"]
    )
    assert "the worst case counts them" in verdict["verdict"]


def test_one_step_gap_is_the_best_iterative_attack_minus_fgsm():
    from dam.robustness.masking import one_step_gap

    t = _table([0.8, 0.3], None)
    assert one_step_gap(t) is None  # no FGSM
    t.attacks["fgsm"], t.gradient_free["fgsm"] = [0.7, 0.35], False
    t.attacks["apgd-ce"], t.gradient_free["apgd-ce"] = [0.75, 0.2], False
    # iterative best per budget: min(pgd, apgd-ce) = 0.75 / 0.2; positive where one step did better
    assert one_step_gap(t) == pytest.approx([0.05, -0.15])
