"""The AutoAttack suite: it breaks what cross-entropy attacks cannot, it is checked, and the masking
diagnostics name the starvation."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

pytest.importorskip("pyautoattack")
pytest.importorskip("foolbox")

from dam.model import as_logits
from dam.robustness.attacks import PGD, robust_accuracy
from dam.robustness.attacks.autoattack import APGDCE, APGDT, AutoAttack, Square
from dam.robustness.attacks.standard import within_budget
from dam.robustness.masking import ce_dlr_gap, masking_verdict, starvation

SCALE = 100.0


class Saturated(nn.Module):
    """A linear classifier whose logits are scaled by 100: every logit gap on these images exceeds 100, so
    exp() of it underflows, the softmax is exactly one-hot and the cross-entropy gradient is exactly zero
    around every clean image (random starts included).  A cross-entropy attack cannot move; the targeted DLR
    loss, invariant to the logits' scale, can.  The same failure, for another numerical reason, as
    cross-entropy attacks on large-n DAMs."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.weight = nn.Parameter(torch.randn(10, 784, generator=g))

    def unscaled(self, images: torch.Tensor) -> torch.Tensor:
        return (images.reshape(images.shape[0], -1) - 0.5) @ self.weight.t()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return SCALE * self.unscaled(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.logits(images))


@pytest.fixture(scope="module")
def starved() -> tuple[Saturated, torch.Tensor, torch.Tensor]:
    model = Saturated().eval()
    pool = (0.5 + 0.2 * torch.randn(4000, 784, generator=torch.Generator().manual_seed(1))).clamp(0.1, 0.9)
    with torch.no_grad():
        z = model.unscaled(pool)
    top = z.topk(2, dim=1).values
    keep = ((top[:, 0] - top[:, 1] >= 10) & (top[:, 0] - top[:, 1] <= 25)).nonzero()[:16, 0]
    x, y = pool[keep], z[keep].argmax(dim=1)
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model.logits(xg), y), xg)
    assert float(grad.abs().max()) == 0.0  # the premise: no cross-entropy gradient at all
    return model, x, y


def test_suite_breaks_a_model_that_starves_cross_entropy_attacks(starved) -> None:
    model, x, y = starved
    pgd = PGD(model, [0.05], norm="linf", steps=20)(x, y)
    apgd_t = APGDT(model, [0.05], norm="linf", steps=20, targets=3)(x, y)
    assert pgd.robust_accuracy()[0] == 1.0  # Foolbox PGD on cross-entropy finds nothing
    assert apgd_t.robust_accuracy()[0] <= 0.25  # the DLR loss walks out


def test_every_adversarial_is_checked(starved) -> None:
    model, x, y = starved
    for norm, eps in (("linf", 0.05), ("l2", 1.0)):
        result = APGDT(model, [eps], norm=norm, steps=20, targets=3)(x, y)
        adv, ok = result.adversarials[0], result.success[0]
        assert bool(within_budget(norm, adv, x, eps).all()) and float(adv.min()) >= 0 and float(adv.max()) <= 1
        with torch.no_grad():
            assert bool((as_logits(model)(adv[ok]).argmax(dim=1) != y[ok]).all())


def test_worst_case_is_never_above_any_attack_and_diagnostics_flag_starvation(starved, caplog) -> None:
    model, x, y = starved
    pgd = PGD(model, [0.02, 0.05], norm="linf", steps=20)
    protocol = AutoAttack(model, [0.02, 0.05], norm="linf", steps=20, targets=3, fab=False, square_queries=200)
    with caplog.at_level(logging.INFO, logger="dam.robustness.attacks.accuracy"):
        table, results = robust_accuracy(model, "starved", x, y, [pgd], [protocol])
    assert {"pgd", "apgd-ce", "apgd-t"} <= set(table.attacks)
    # what each attack cost is recorded, and each finished attack is one progress line
    assert all(table.settings[a]["seconds"] >= 0 for a in table.attacks) and table.settings["apgd-t"]["seconds"] > 0
    assert "square (on survivors)" in table.attacks  # named even where APGD left it nothing to attack
    assert all(any(f"linf {a}:" in r.getMessage() for r in caplog.records) for a in table.attacks)
    square = next(r.getMessage() for r in caplog.records if "square (on survivors):" in r.getMessage())
    assert "points more; worst case 0.02:" in square and "robust accuracy" not in square  # not its own accuracy
    for accs in table.attacks.values():
        assert all(w <= a + 1e-9 for w, a in zip(table.worst_case, accs, strict=True))
    gap = ce_dlr_gap(table)
    assert gap is not None and max(gap) >= 0.5  # cross-entropy attacks overstate robustness by half the images
    verdict = masking_verdict([table], [], {"linf": starvation(model, results["pgd"])})
    assert verdict["masked"] and verdict["ce_dlr_gaps"]
    assert "starved" in verdict["verdict"] and "apgd-t" in verdict["verdict"]


def test_seeded_and_the_callers_random_state_is_left_alone(starved) -> None:
    model, x, y = starved
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    a = Square(model, [0.05], queries=50, seed=3)(x[:4], y[:4])
    after = torch.rand(3)
    b = Square(model, [0.05], queries=50, seed=3)(x[:4], y[:4])
    assert torch.equal(before, after)
    assert torch.equal(a.adversarials, b.adversarials) and torch.equal(a.success, b.success)
    assert a.queries_per_image > 1


def test_a_small_trained_dam_is_broken_by_the_dlr_attack(mnist_dir, tmp_path) -> None:
    """A small DAM_20 on real digits: targeted APGD (DLR) is at least as strong as APGD on cross-entropy."""
    from dam import seeded_subset
    from dam.data import load_dataset
    from dam.training import TrainConfig, train

    config = TrainConfig(n=20, m=30, num_memories=64, temperature_start=540, temperature_end=540, ramp_epochs=0,
                         epochs=2, batch_size=100, lr=0.04, lr_decay=0.95, momentum=0.6, train_subset=3000)  # fmt: skip
    model = train(config, tmp_path / "n20", data_dir=mnist_dir, progress=False)
    x, y = load_dataset("mnist", "test", data_dir=mnist_dir)
    x, y, _ = seeded_subset(x.reshape(-1, 784), y, 24, 0)
    ce = APGDCE(model, [0.2], steps=20)(x, y).robust_accuracy()[0]
    dlr = APGDT(model, [0.2], steps=20, targets=3)(x, y).robust_accuracy()[0]
    assert dlr <= ce + 1e-9


def test_budgets_are_attacked_from_the_smallest_and_carried_up(starved) -> None:
    model, x, y = starved
    result = APGDT(model, [0.05, 0.02], norm="linf", steps=20, targets=3)(x, y)  # unsorted on purpose
    small, large = result.success[1], result.success[0]
    assert small.any() and (small <= large).all()
    # an image broken within 0.02 is not attacked again within 0.05: it keeps the 0.02 adversarial
    assert torch.equal(result.adversarials[0, small], result.adversarials[1, small])


def test_a_transfer_source_attacks_every_budget_in_full(starved) -> None:
    model, x, y = starved
    carried = APGDT(model, [0.02, 0.05], norm="linf", steps=20, targets=3)(x, y)
    full = APGDT(model, [0.02, 0.05], norm="linf", steps=20, targets=3, every_budget=True)(x, y)
    assert bool((full.success[0] <= full.success[1]).all())  # still carried where the larger run failed
    both = full.success[0] & full.success[1]
    assert both.any()
    # the larger budget's own adversarials: further from the clean images than the smaller budget's
    assert float(full.distances[1, both].mean()) > float(carried.distances[1, both].mean())


def test_what_the_effort_check_breaks_joins_the_worst_case(starved) -> None:
    from dam.robustness.attacks.accuracy import add_to_worst_case
    from dam.robustness.attacks.autoattack import effort_check

    model, x, y = starved
    table, results = robust_accuracy(model, "starved", x, y, [PGD(model, [0.02, 0.05], steps=10)])
    assert table.worst_case == [1.0, 1.0]  # cross-entropy alone breaks nothing here
    summary, check = effort_check(model, x, y, results["worst case"].success, [0.02, 0.05], steps=10, targets=3)
    assert max(summary["extra_broken_points"]) > 0 and not summary["converged"]
    add_to_worst_case(table, results, "effort check", check, {"attack": "effort check", "gradients": True})
    assert "effort check (on survivors)" in table.attacks
    for before, points, after in zip([1.0, 1.0], summary["extra_broken_points"], table.worst_case, strict=True):
        assert after == pytest.approx(before - points / 100)
    for e, eps in enumerate([0.02, 0.05]):  # its adversarials are checked like every attack's
        ok = check.success[e]
        assert bool(within_budget("linf", check.adversarials[e, ok], x[ok], eps).all())
        with torch.no_grad():
            assert bool((as_logits(model)(check.adversarials[e, ok]).argmax(dim=1) != y[ok]).all())
