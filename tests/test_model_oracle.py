"""micrograd-style oracle tests: the PyTorch model and its autograd gradients against numpy_oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dam.model import DenseAssociativeMemory
from dam.training import dam_loss
from numpy_oracle import loss_gradients, outputs

K, B = 40, 6


def _problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Random memories and images, with T chosen so that the outputs sit in tanh's sensitive range."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(B, 784))
    # Half the memories resemble the images so that many arguments are positive and large, as in a
    # trained model; the rest are random and mostly inactive.
    xi = rng.normal(0.0, 0.3, size=(K, 794))
    xi[: K // 2, :784] += 0.6 * (2 * x[rng.integers(0, B, size=K // 2)] - 1)
    xi = np.clip(xi, -1, 1)
    labels = rng.integers(0, 10, size=B)
    best = None
    for T in np.geomspace(30, 1000, 200):  # within the range 30..1000
        spread = np.abs(np.arctanh(np.clip(outputs(xi, x, n, T), -0.999999, 0.999999))).max()
        if best is None or abs(np.log(spread / 2.0)) < best[0]:
            best = (abs(np.log(spread / 2.0)), T)
    return xi, x, labels, float(best[1])


def _model(xi: np.ndarray, n: int, T: float, dtype: torch.dtype) -> DenseAssociativeMemory:
    model = DenseAssociativeMemory(n, K, T, dtype=dtype)
    with torch.no_grad():
        model.memories.copy_(torch.from_numpy(xi))
    return model


@pytest.mark.parametrize("n", [2, 3, 20, 30])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_outputs_match_oracle(n: int, dtype: torch.dtype) -> None:
    xi, x, _, T = _problem(n)
    expected = outputs(xi, x, n, T)
    assert 0.05 < np.abs(expected).max() < 0.9999, "the problem must exercise tanh's curved range"
    got = _model(xi, n, T, dtype)(torch.from_numpy(x).to(dtype)).detach().double().numpy()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(got, expected, atol=tol, rtol=tol * 10)


@pytest.mark.parametrize("n", [2, 3, 20, 30])
@pytest.mark.parametrize("m", [1, 3])
def test_gradients_match_appendix_a(n: int, m: int) -> None:
    xi, x, labels, T = _problem(n, seed=n)
    grad_xi, grad_x = loss_gradients(xi, x, labels, n, T, m)
    model = _model(xi, n, T, torch.float64)
    images = torch.from_numpy(x).requires_grad_(True)
    loss = dam_loss(model(images), torch.from_numpy(labels), m)
    loss.backward()
    scale_xi, scale_x = np.abs(grad_xi).max(), np.abs(grad_x).max()
    assert scale_xi > 0 and scale_x > 0
    np.testing.assert_allclose(model.memories.grad.numpy(), grad_xi, atol=1e-10 * scale_xi, rtol=1e-8)
    np.testing.assert_allclose(images.grad.numpy(), grad_x, atol=1e-10 * scale_x, rtol=1e-8)


@pytest.mark.parametrize("n", [2, 20])
def test_float32_gradients_close_to_oracle(n: int) -> None:
    xi, x, labels, T = _problem(n, seed=10 + n)
    grad_xi, _ = loss_gradients(xi, x, labels, n, T, 2)
    model = _model(xi, n, T, torch.float32)
    dam_loss(model(torch.from_numpy(x).float()), torch.from_numpy(labels), 2).backward()
    err = np.abs(model.memories.grad.double().numpy() - grad_xi).max() / np.abs(grad_xi).max()
    assert err < 1e-4


@pytest.mark.parametrize("n", [3, 30])
def test_scores_from_spins_are_the_oracle_in_the_papers_variables(n: int) -> None:
    # The paper's v = 2x - 1 in [-1, 1]: tanh of these scores is the oracle's Y, and the image path agrees.
    xi, x, _, T = _problem(n, seed=1)
    model = _model(xi, n, T, torch.float64)
    spins = torch.from_numpy(2 * x - 1)
    scores = model.scores_from_spins(spins)
    np.testing.assert_allclose(np.tanh(scores.detach().numpy()), outputs(xi, x, n, T), atol=1e-12, rtol=1e-11)
    torch.testing.assert_close(scores, model.scores(torch.from_numpy(x)), atol=1e-12, rtol=1e-11)
