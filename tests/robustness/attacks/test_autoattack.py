"""The AutoAttack suite: it breaks what cross-entropy attacks cannot, it is checked, and the masking
diagnostics name the starvation."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from dam.errors import InputError
from dam.model import as_logits
from dam.robustness.attacks import PGD, robust_accuracy
from dam.robustness.attacks.autoattack import APGDT, FABT, AutoAttack, Square
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


def test_fab_and_the_plus_protocol_run_and_every_adversarial_they_return_is_checked(starved) -> None:
    """FAB-T (the standard protocol's third attack) and the "plus" protocol's restarts (APGD-CE, untargeted
    APGD-DLR and FAB, five each) in a short run: each attack has its column, what it returns is checked like
    every attack's, and the worst case is never above any column."""
    model, x, y = starved
    fab = FABT(model, [1.0], norm="l2", steps=10, targets=3)(x, y)
    assert fab.robust_accuracy()[0] < 1.0  # FAB needs no cross-entropy: it breaks what PGD cannot here
    plus = AutoAttack(model, [0.02, 0.05], norm="linf", version="plus", steps=5, targets=3, square_queries=20)
    lines: list[str] = []
    table, results = robust_accuracy(model, "starved", x, y, [], [plus], log=lines.append)
    cascade = ["fab-t", "square", "apgd-ce-x5", "apgd-dlr", "fab"]
    # the job's log gets a line as each attack of the protocol ends (in a worker process too: it is handed on)
    assert [line.split(":")[0].strip() for line in lines if "autoattack" in line] == [
        f"autoattack linf {i}/7 {a.name}" for i, a in enumerate(plus.first + plus.cascade, 1)]  # fmt: skip
    assert set(table.attacks) == {"apgd-ce", "apgd-t", *(f"{a} (on survivors)" for a in cascade)}
    assert [a["restarts"] for a in plus.describe()["attacks"]] == [1, 1, 1, 1, 5, 5, 5]
    assert table.worst_case[1] < 0.5  # (the checks below see adversarials)
    for accs in table.attacks.values():
        assert all(w <= a + 1e-9 for w, a in zip(table.worst_case, accs, strict=True))
    for name, norm, result in [("fab-t", "l2", fab), *((k, "linf", r) for k, r in results.items())]:
        for e, eps in enumerate(result.epsilons if len(result.adversarials) else []):
            if not result.success[e].any():
                continue
            adv = result.adversarials[e][result.success[e]]
            assert bool(within_budget(norm, adv, x[result.success[e]], eps).all()), name
            assert bool(((adv >= 0) & (adv <= 1)).all()), name
            with torch.no_grad():
                assert bool((as_logits(model)(adv).argmax(dim=1) != y[result.success[e]]).all()), name


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
    assert verdict["ce_overstates"] and verdict["ce_dlr_gaps"] and not verdict["masking_suspected"]
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


def test_a_trained_large_n_dam_starves_cross_entropy_attacks_and_the_suite_breaks_it(mnist_dir, tmp_path) -> None:
    """The failure the suite exists for, on a real DAM_30 (100 memories, 10 epochs of 10,000 digits: about 10%
    test error): Foolbox's PGD on cross-entropy walks the digits to where every score is near zero and stalls
    there, the image still "correct"; targeted APGD on the DLR loss breaks them.  The worst case follows the
    stronger attack, the masking verdict names the starvation, and every adversarial counted is checked."""
    from dam import seeded_subset
    from dam.data import load_dataset
    from dam.robustness.attacks.accuracy import WORST
    from dam.robustness.masking import GradientHealth
    from dam.training import TrainConfig, train

    config = TrainConfig(n=30, m=30, num_memories=100, temperature_start=650, temperature_end=650, ramp_epochs=0,
                         epochs=10, batch_size=100, lr=0.04, lr_decay=0.95, momentum=0.6,
                         train_subset=10_000)  # fmt: skip
    model = train(config, tmp_path / "n30", data_dir=mnist_dir, progress=False).eval()
    x, y = load_dataset("mnist", "test", data_dir=mnist_dir)
    x, y, _ = seeded_subset(x.reshape(-1, 784), y, 48, 0)
    eps = [0.1, 0.2]
    suite = AutoAttack(model, eps, steps=20, targets=3, fab=False, square_queries=0)
    table, results = robust_accuracy(model, "n30", x, y, [PGD(model, eps, steps=40)], [suite])
    assert table.clean_accuracy >= 0.8  # a trained model, not one that is wrong everywhere already
    pgd, dlr = table.attacks["pgd"], table.attacks["apgd-t"]
    assert pgd[1] >= 0.3 and pgd[1] - dlr[1] >= 0.25  # PGD leaves a third or more; APGD-T a quarter fewer
    assert table.worst_case[1] <= dlr[1]
    shares = starvation(model, results["pgd"])  # PGD's end points where every score is within 1e-3 of zero
    assert shares is not None and shares[1] >= 0.5
    verdict = masking_verdict(table, [GradientHealth("float32", 48, 0.0, 0.0)], {"linf": shares})
    assert verdict["ce_overstates"] and verdict["ce_dlr_gaps"] and "are starved" in verdict["verdict"]
    assert not verdict["masking_suspected"]  # the cross-entropy loss's gradient vanishes, not the model's
    assert verdict["strongest"]["linf"]["attack"] == "apgd-t"
    # every adversarial counted: within its budget, in [0, 1], and wrong when predicted again
    logits = as_logits(model)
    for name, result in results.items():
        if name == WORST or not len(result.adversarials):
            continue
        for e, budget in enumerate(eps):
            won = result.success[e] & (logits(x).argmax(1) == y)  # (clean errors count without an adversarial)
            adv = result.adversarials[e][won]
            assert within_budget("linf", adv, x[won], budget).all() and adv.min() >= 0 and adv.max() <= 1, name
            with torch.no_grad():
                assert (logits(adv).argmax(1) != y[won]).all(), name


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


def test_a_transfer_source_hands_on_its_highest_loss_iterate_where_it_fails(starved) -> None:
    """The reference code returns the clean image where it fails; a transfer source must hand on its attempt,
    or a source as robust as its target would transfer mostly clean images."""
    from dam.robustness.attacks.autoattack import APGDCE, Square

    model, x, y = starved
    budgets = [0.002, 0.005]
    plain = APGDT(model, budgets, norm="linf", steps=10, targets=2, every_budget=True)(x, y)
    source = APGDT(model, budgets, norm="linf", steps=10, targets=2, every_budget=True, hand_on=True)(x, y)
    assert torch.equal(plain.success, source.success)  # the same attack: only what a failure returns differs
    assert torch.equal(plain.adversarials[source.success], source.adversarials[source.success])
    failed = ~source.success
    assert failed.any() and torch.equal(plain.adversarials[failed], x.expand(2, -1, -1)[failed])
    for e, eps in enumerate(budgets):  # an attempt inside the budget and [0, 1], not the clean image, still wrong
        attempt = source.adversarials[e, failed[e]]
        assert bool(within_budget("linf", attempt, x[failed[e]], eps).all())
        assert float(attempt.min()) >= 0 and float(attempt.max()) <= 1
        assert bool(((attempt - x[failed[e]]).abs().amax(dim=1) > 0).all())
        with torch.no_grad():
            assert torch.equal(as_logits(model)(attempt).argmax(dim=1), y[failed[e]])
    assert APGDCE(model, budgets, hand_on=True).hand_on
    with pytest.raises(InputError, match="no iterates to hand on"):
        Square(model, budgets, hand_on=True)


def test_the_effort_check_records_only_the_attacks_that_ran(starved) -> None:
    from dam.robustness.attacks.autoattack import effort_check

    model, x, y = starved
    everything = torch.ones(2, len(x), dtype=torch.bool)  # every image already broken at both budgets
    summary, check = effort_check(model, x, y, everything, [0.02, 0.05], steps=10, targets=3)
    assert summary["attacks"] == [] and len(summary["not_run"]) == 3 and not check.success.any()
    assert summary["not_run"][0] == "apgd-ce: no image left to attack"


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
