from __future__ import annotations

import pytest
import torch

from dam.probes import RubbishSearch
from dam.probes.gradient import unit_step
from fakes import prototype_model


def saturating_model():
    """Every memory strongly active on any image near grey, at T = 1: tanh is exactly +-1, gradients 0."""
    from dam.model import DenseAssociativeMemory

    model = DenseAssociativeMemory(30, 10, 1.0)
    with torch.no_grad():
        label = -torch.ones(10, 10) + 2 * torch.eye(10)
        model.memories.copy_(torch.cat([torch.ones(10, 784), label], dim=1))
    return model


def test_rubbish_reaches_every_target_class() -> None:
    model = prototype_model(3)
    targets = torch.arange(10).repeat(2)
    # the hand-built model's outputs approach their targets slowly, hence the loose tolerance
    search = RubbishSearch(model, eps=0.1, max_steps=500, output_tol=0.9, m=2)
    result = search(targets, torch.Generator().manual_seed(0))
    assert result.images.shape == (20, 784) and result.objective.shape == (20, 501)
    assert result.success.all(), (result.converged, result.predictions)
    assert not result.stalled.any() and not result.stuck.any()
    for i in range(20):
        trace = result.objective[i, : int(result.steps[i]) + 1]
        assert torch.isfinite(trace).all() and trace[-1] < 1.5 < trace[0]
        assert float(trace[-1]) < float(trace[0]) and (trace.diff() <= 1e-12).float().mean() > 0.8
        assert torch.isnan(result.objective[i, int(result.steps[i]) + 1 :]).all()
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1  # clipped by default


def test_converged_means_every_output_is_at_its_target() -> None:
    """Convergence is judged on the outputs, max |Y - t| <= output_tol, the same for every m."""
    model = prototype_model(3)
    targets = torch.arange(10).repeat(2)
    for tol in (0.95, 0.9):
        result = RubbishSearch(model, eps=0.1, max_steps=500, output_tol=tol, m=2)(
            targets, torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            y = model(result.images).double()
        t = -torch.ones_like(y)
        t[torch.arange(len(targets)), targets] = 1
        distance = (y - t).abs().amax(dim=1)
        assert result.converged.any()
        assert (distance[result.converged] <= tol + 1e-5).all()
        assert (distance[~result.converged] > tol - 1e-5).all()
    # a tighter tolerance needs more steps: the same searches do not all stop at once
    loose = RubbishSearch(model, eps=0.1, max_steps=500, output_tol=0.95, m=2)(
        targets, torch.Generator().manual_seed(0)
    )
    tight = RubbishSearch(model, eps=0.1, max_steps=500, output_tol=0.9, m=2)(targets, torch.Generator().manual_seed(0))
    assert (tight.steps >= loose.steps).all() and (tight.steps > loose.steps).any()


def test_every_step_has_length_eps() -> None:
    v = torch.randn(5, 784)
    grad = torch.randn(5, 784) * torch.tensor([1e-6, 1, 10, 1e6, 3])[:, None]
    new, usable = unit_step(v, grad, eps=0.07, clip=False)
    assert usable.all()
    torch.testing.assert_close((new - v).norm(dim=1), torch.full((5,), 0.07))
    model = prototype_model(3)
    search = RubbishSearch(model, eps=0.07, max_steps=1, output_tol=1e-6, m=2, clip=False)
    result = search(torch.arange(4), torch.Generator().manual_seed(0))
    # one step of length eps in [-1, 1] pixel units is eps / 2 in [0, 1] image units
    torch.testing.assert_close((result.images - result.start).norm(dim=1), torch.full((4,), 0.035))


def test_zero_gradient_is_a_failure_not_robustness() -> None:
    """A model built to saturate: tanh is flat, the gradient is exactly zero, the search must say so."""
    model = saturating_model()
    assert (model(torch.full((4, 784), 0.5)).abs() == 1).all()
    result = RubbishSearch(model, eps=0.1, max_steps=50, m=30)(torch.arange(10), torch.Generator().manual_seed(0))
    assert result.stalled.all() and not result.success.any()
    assert (result.steps == 0).all()
    zero, usable = unit_step(torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [float("nan"), 1, 1]]), 0.1, False)
    assert not usable.any() and torch.equal(zero, torch.zeros(2, 3))


def test_float64_option_runs_in_float64() -> None:
    model = prototype_model(20)
    result = RubbishSearch(model, max_steps=5, m=2, dtype=torch.float64)(torch.arange(3))
    assert result.images.dtype == torch.float32 and model.memories.dtype == torch.float32


def test_bad_settings_are_one_line() -> None:
    from dam.errors import InputError

    model = prototype_model(3)
    with pytest.raises(InputError, match="dtype must be a floating torch dtype"):
        RubbishSearch(model, m=3, dtype="float32")
    with pytest.raises(InputError, match=r"generator must be a torch\.Generator"):
        RubbishSearch(model, m=3, max_steps=2)([1], 0)
