from __future__ import annotations

import pytest
import torch

from dam.model import InputError, as_logits
from dam.robustness.attacks import FGSM, PGD, AttackResult, HopSkipJump, Transfer
from dam.runs import load_model
from fakes import prototype_images, prototype_model


def test_dam_is_attacked_through_its_scores():
    model = prototype_model(n=3)
    x, _ = prototype_images(model, 5)
    assert torch.equal(as_logits(model)(x), model.scores(x))
    mlp = torch.nn.Linear(784, 10)  # a foreign module: its forward is taken as the logits
    assert torch.equal(as_logits(mlp)(x.reshape(5, -1)), mlp(x.reshape(5, -1)))
    wrapped = as_logits(model)
    assert as_logits(wrapped) is wrapped  # idempotent


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_breaks_a_small_network_within_its_budget(mlp_run, test_subset, norm):
    model = load_model(mlp_run)
    x, y = test_subset
    eps = [0.0, 0.3] if norm == "linf" else [0.0, 4.0]
    result = PGD(model, eps, norm=norm, steps=20)(x, y)
    clean = (model(x).argmax(1) == y).float().mean()
    assert result.robust_accuracy()[0] == pytest.approx(float(clean))  # budget 0 = clean accuracy
    assert result.robust_accuracy()[1] <= 0.1
    assert (result.distances <= torch.tensor(eps)[:, None] + 1e-5).all()
    assert result.adversarials.min() >= 0 and result.adversarials.max() <= 1
    assert result.queries_per_image > 20  # steps count as model evaluations


def test_attacks_are_seeded_and_leave_global_rng_alone(mlp_run, test_subset):
    model = load_model(mlp_run)
    x, y = test_subset
    state = torch.get_rng_state()
    a = PGD(model, [0.1], steps=3, seed=5)(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    b = PGD(model, [0.1], steps=3, seed=5)(x, y)
    assert torch.equal(a.adversarials, b.adversarials)


def test_fgsm_decision_based_and_transfer_run_end_to_end(mlp_run, test_subset):
    model = load_model(mlp_run)
    x, y = test_subset
    fgsm = FGSM(model, [0.1, 0.3])(x, y)
    assert fgsm.success.shape == (2, len(x))
    hsj = HopSkipJump(model, [0.1, 0.3], steps=3, initial_gradient_eval_steps=10, max_gradient_eval_steps=20)
    result = hsj(x, y)
    # minimisation attack: what is adversarial within 0.1 is adversarial within 0.3
    assert (result.success[0] <= result.success[1]).all()
    assert hsj.uses_gradients is False and result.queries_per_image > 10
    target = prototype_model(n=3)
    transfer = Transfer(target, PGD(model, [0.3], steps=5), "mlp")(x, y)
    with torch.no_grad():
        expected = target.scores(transfer.adversarials[0]).argmax(1) != y
    assert torch.equal(transfer.success[0], expected)
    # the budget check is measured where each budget is an attack of its own, and only there
    assert fgsm.carried is not None and len(fgsm.carried) == 2 and fgsm.carried[0] == 0
    assert result.carried is None and transfer.carried is None  # one minimisation cut to size; another model's


def test_hopskipjump_starts_from_any_attacked_image_whatever_the_batch(mlp_run, test_subset):
    # Batches bound HopSkipJump's memory (its noise is drawn for a whole batch); the start of an image is the
    # nearest attacked image labelled otherwise, sought among all of them.  With one image per batch a start
    # sought within the batch would not exist, and nothing could be attacked.
    model = load_model(mlp_run)
    x, y = test_subset
    x, y = x[:6], y[:6]
    hsj = HopSkipJump(model, [1.0], steps=2, initial_gradient_eval_steps=10, max_gradient_eval_steps=10, batch_size=1)
    assert len(set(y.tolist())) > 1
    result = hsj(x, y)
    assert result.success.all()  # L-inf 1 holds every other image: each start is already an adversarial
    assert (result.adversarials >= 0).all() and (result.adversarials <= 1).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hopskipjump_estimates_the_gradient_per_image(norm):
    # Each probe lies at the radius delta from its own image, whatever the batch (Foolbox 3.3.4 scales the
    # probes over the whole batch: 1/sqrt(64) of delta here), and the estimate is a unit vector per image
    # that points across a linear decision boundary through the images.
    import eagerpy as ep

    from dam.robustness.attacks.standard import per_image_hopskipjump, require_foolbox

    torch.manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(64, 784)  # away from the box's faces, so no probe is clipped
    w = torch.randn(784)
    delta = torch.full((64,), 0.5)
    radii = []

    def is_adversarial(probe):
        p = probe.raw
        radii.append((p - x).norm(dim=1))
        return ep.astensor(p @ w > x @ w)  # a boundary through each image, normal to w

    attack = per_image_hopskipjump(require_foolbox())(constraint=norm)
    grad = attack.approximate_gradients(is_adversarial, ep.astensor(x), 200, ep.astensor(delta)).raw
    assert torch.allclose(torch.stack(radii), torch.tensor(0.5), rtol=1e-4)
    assert torch.allclose(grad.norm(dim=1), torch.tensor(1.0), rtol=1e-4)
    cosine = grad @ w / w.norm()
    assert (cosine > 0.2).all()  # 200 random probes in 784 dimensions: about 0.4 expected, 0 by chance


def test_bad_input_is_named():
    model = prototype_model(n=3)
    x, y = prototype_images(model, 4)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        PGD(model, [0.1])(x * 3, y)
    with pytest.raises(InputError, match="labels"):
        PGD(model, [0.1])(x, y.float())
    with pytest.raises(InputError, match="empty"):
        PGD(model, [0.1])(x[:0], y[:0])
    with pytest.raises(ValueError, match="norm"):
        PGD(model, [0.1], norm="l1")
    with pytest.raises(ValueError, match="epsilons"):
        FGSM(model, [])


def test_an_adversarial_within_a_budget_counts_within_every_larger_one():
    from dam.robustness.attacks.standard import carry_to_larger_budgets

    adversarials = torch.rand(3, 2, 784)
    success = torch.tensor([[True, False], [False, False], [False, True]])  # budgets 0.2, 0.3, 0.1 (unsorted)
    distances = torch.rand(3, 2)
    result = AttackResult("x", "linf", [0.2, 0.3, 0.1], adversarials.clone(), success.clone(), distances.clone(), 1.0)
    carry_to_larger_budgets(result)
    # image 1 broken at 0.1 -> broken at 0.2 and 0.3 with that adversarial; image 0 broken at 0.2 -> at 0.3
    assert result.success.tolist() == [[True, True], [True, True], [False, True]]
    assert torch.equal(result.adversarials[0, 1], adversarials[2, 1])
    assert torch.equal(result.adversarials[1, 1], adversarials[2, 1])
    assert torch.equal(result.adversarials[1, 0], adversarials[0, 0])
    assert result.distances[1, 0] == distances[0, 0]
    # what was carried is counted per budget (in the budgets' given order): at 0.2 image 1, at 0.3 images 0 and 1
    assert result.carried == [1, 2, 0]


def test_every_attacks_success_is_checked_again_and_monotone_in_the_budget(mlp_run, test_subset):
    model = load_model(mlp_run)
    x, y = test_subset

    class Overreaching(FGSM):
        """Claims success for adversarials twice its budget away (a library bug, say)."""

        def _attack_batch(self, attack, fmodel, xb, yb, starts):
            far = (xb + 2 * max(self.epsilons)).clamp(0, 1)
            return far[None].repeat(len(self.epsilons), 1, 1), torch.ones(len(self.epsilons), len(xb), dtype=bool)

    assert not Overreaching(model, [0.05, 0.1])(x, y).success.any()  # outside the budget: not a success
    for norm, eps in (("linf", [0.3, 0.05, 0.1]), ("l2", [2.0, 0.5, 1.0])):
        result = PGD(model, eps, norm=norm, steps=5)(x, y)
        assert (result.success[1] <= result.success[2]).all() and (result.success[2] <= result.success[0]).all()
        assert (result.distances <= torch.tensor(eps)[:, None] * (1 + 1e-5) + 1e-6).all()
