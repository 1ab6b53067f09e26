"""An independent float64 NumPy transcription of the paper's equations, written from docs/model.md with loops
over classes and no shared code with ``dam.model``: eq. (1) for the outputs and the NIPS 2016 Appendix A
gradient of the loss C = sum (Y - t)^(2m) with respect to the memories and the input pixels."""

from __future__ import annotations

import numpy as np

N_PIX = 784
N_CLASS = 10


def rectified_power(x: np.ndarray, n: int) -> np.ndarray:
    return np.where(x > 0, x, 0.0) ** n


def rectified_power_derivative(x: np.ndarray, n: int) -> np.ndarray:
    return np.where(x > 0, n * np.where(x > 0, x, 0.0) ** (n - 1), 0.0)


def arguments(xi: np.ndarray, v: np.ndarray, alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, B) arguments of F_n with label alpha switched on and off, every other label at -1."""
    visible, label = xi[:, :N_PIX], xi[:, N_PIX:]
    others = label.sum(axis=1) - label[:, alpha]
    dot = visible @ v.T
    on = dot + label[:, alpha][:, None] - others[:, None]
    off = dot - label[:, alpha][:, None] - others[:, None]
    return on, off


def outputs(xi: np.ndarray, x: np.ndarray, n: int, T: float) -> np.ndarray:
    """Y (B, 10) of eq. (1) for images x in [0, 1], with beta = 1 / T^n applied after F_n."""
    v = 2.0 * x - 1.0
    beta = 1.0 / T**n
    Y = np.empty((x.shape[0], N_CLASS))
    for alpha in range(N_CLASS):
        on, off = arguments(xi, v, alpha)
        Y[:, alpha] = np.tanh(beta * (rectified_power(on, n) - rectified_power(off, n)).sum(axis=0))
    return Y


def loss(xi: np.ndarray, x: np.ndarray, labels: np.ndarray, n: int, T: float, m: int) -> float:
    Y = outputs(xi, x, n, T)
    t = -np.ones_like(Y)
    t[np.arange(len(labels)), labels] = 1.0
    return float(((Y - t) ** (2 * m)).sum())


def loss_gradients(
    xi: np.ndarray, x: np.ndarray, labels: np.ndarray, n: int, T: float, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """dC/dxi (K, 794) and dC/dx (B, 784) by the chain rule of Appendix A."""
    v = 2.0 * x - 1.0
    beta = 1.0 / T**n
    Y = outputs(xi, x, n, T)
    t = -np.ones_like(Y)
    t[np.arange(len(labels)), labels] = 1.0
    # dC/d(beta * s_alpha) for each example and class
    g = 2 * m * (Y - t) ** (2 * m - 1) * (1.0 - Y**2) * beta  # (B, 10), times beta: d(beta s)/ds
    grad_xi = np.zeros_like(xi)
    grad_v = np.zeros_like(v)
    for alpha in range(N_CLASS):
        on, off = arguments(xi, v, alpha)
        d_on, d_off = rectified_power_derivative(on, n), rectified_power_derivative(off, n)  # (K, B)
        w_on, w_off = d_on * g[:, alpha], d_off * g[:, alpha]  # weighted by dC/ds_alpha
        grad_xi[:, :N_PIX] += (w_on - w_off) @ v
        for gamma in range(N_CLASS):
            if gamma == alpha:  # on: +xi_alpha, off: -xi_alpha
                grad_xi[:, N_PIX + gamma] += (w_on + w_off).sum(axis=1)
            else:  # both arguments carry -xi_gamma
                grad_xi[:, N_PIX + gamma] += (-w_on + w_off).sum(axis=1)
        grad_v += (w_on - w_off).T @ xi[:, :N_PIX]
    return grad_xi, 2.0 * grad_v  # dv/dx = 2
