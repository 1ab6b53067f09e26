"""Confidence (section 5): P = softmax(beta_sm * Y), Z = max P; beta_sm calibrated so mean Z = accuracy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dam.errors import InputError, check_positive

PAPER_BETA_SM = 3.2  # e^b / (e^b + 9 e^-b) = 0.985 at b ~ 3.2: the single value of the rubbish table


@torch.no_grad()
def model_outputs(model: nn.Module, images: Tensor, batch_size: int = 2000) -> Tensor:
    param = next(model.parameters())
    x = images.reshape(len(images), -1)
    return torch.cat(
        [model(x[i : i + batch_size].to(param.device, param.dtype)).cpu() for i in range(0, len(x), batch_size)]
    )


def check_outputs(outputs: Tensor) -> Tensor:
    """Model outputs (B, classes) as a finite tensor without gradient history (a model's forward output may be
    given as it is); anything else is one InputError, never a NaN confidence."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise InputError(f"outputs must be a tensor of shape (images, classes), got {shape}")
    outputs = outputs.detach()
    if not bool(torch.isfinite(outputs).all()):
        raise InputError("outputs hold NaN or infinite values")
    return outputs


def check_labels(labels: Tensor | list[int], count: int, device: torch.device) -> Tensor:
    """One class index per image, as a tensor on ``device`` (a list or array is taken as one)."""
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"labels must be class indices, got a {type(labels).__name__}") from None
    if labels.shape != (count,):
        raise InputError(f"{count} images (or outputs) and labels of shape {tuple(labels.shape)}: give one label "
                         "per image")  # fmt: skip
    return labels.to(device)


def confidence(outputs: Tensor, beta_sm: float = PAPER_BETA_SM) -> Tensor:
    """Z = max_alpha softmax(beta_sm * Y)_alpha, per example; ``beta_sm`` a finite number > 0."""
    check_positive("beta_sm", beta_sm)
    return _max_softmax(check_outputs(outputs), beta_sm)


def _max_softmax(outputs: Tensor, beta_sm: float) -> Tensor:
    # Z of outputs and a beta_sm already checked (the calibration's bisection evaluates it 200 times)
    return torch.softmax(beta_sm * outputs.double(), dim=1).amax(dim=1)


def calibrate_beta_sm(
    model: nn.Module | None,
    images: Tensor | None,
    labels: Tensor,
    *,
    outputs: Tensor | None = None,
    lo: float = 1e-3,
    hi: float = 1e4,
    tol: float = 1e-6,
) -> float:
    """The beta_sm at which mean confidence equals accuracy on (images, labels).

    Mean confidence rises monotonically in beta_sm from 1/10 (beta 0) to the fraction of non-tied
    maxima, so bisection on log beta finds it.  Pass precomputed ``outputs`` to skip the forward pass.
    """
    if outputs is None:
        if model is None or images is None:
            raise InputError("give a model and images, or outputs")
        outputs = model_outputs(model, images)
    outputs = check_outputs(outputs)
    labels = check_labels(labels, len(outputs), outputs.device)
    accuracy = float((outputs.argmax(dim=1) == labels).double().mean())
    num_classes = outputs.shape[1]
    if not 1 / num_classes < accuracy < 1:
        raise InputError(f"accuracy {accuracy:.4f} leaves no beta_sm with mean confidence equal to it")
    lo, hi = check_positive("lo", lo), check_positive("hi", hi)  # so every midpoint of the bisection is > 0 too
    mean_z = lambda b: float(_max_softmax(outputs, b).mean())  # noqa: E731
    if mean_z(hi) < accuracy:
        raise InputError(f"mean confidence stays below the accuracy {accuracy:.4f} up to beta_sm = {hi}")
    a, b = torch.tensor(lo).log().item(), torch.tensor(hi).log().item()
    for _ in range(200):
        mid = (a + b) / 2
        if mean_z(torch.tensor(mid).exp().item()) < accuracy:
            a = mid
        else:
            b = mid
        if b - a < tol:
            break
    return float(torch.tensor((a + b) / 2).exp())


def confidence_binned_error(
    outputs: Tensor, labels: Tensor, beta_sm: float, edges: Tensor | None = None
) -> dict[str, list[float]]:
    """Error rate per confidence bin (Fig. 7): bin edges, counts, error rate and mean confidence per bin."""
    outputs = check_outputs(outputs)
    z = _max_softmax(outputs, check_positive("beta_sm", beta_sm))
    wrong = (outputs.argmax(dim=1) != check_labels(labels, len(outputs), outputs.device)).double()
    if edges is None:
        edges = torch.linspace(0.1, 1.0, 10, dtype=torch.float64)
    index = torch.bucketize(z, edges[1:-1].to(z), right=False)
    counts, errors, mean_conf = [], [], []
    for i in range(len(edges) - 1):
        sel = index == i
        count = int(sel.sum())
        counts.append(count)
        errors.append(float(wrong[sel].mean()) if count else None)  # an empty bin has no error rate
        mean_conf.append(float(z[sel].mean()) if count else None)
    return {"edges": edges.tolist(), "count": counts, "error": errors, "mean_confidence": mean_conf}
