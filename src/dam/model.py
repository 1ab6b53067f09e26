"""The Dense Associative Memory classifier DAM_n of Krotov & Hopfield, in one file.

Equations (numbered as in ``docs/model.md``)::

    v      = 2 x - 1                                  pixels from [0, 1] onto [-1, 1]
    h_mu   = xi_mu . v - sum_gamma xi_mu,gamma        every label neuron "off"
    s_alpha = sum_mu F_n((h_mu + 2 xi_mu,alpha) / T) - F_n(h_mu / T)      (scaled energy gap)
    Y_alpha = tanh(s_alpha)                                                (eq. 1)

with F_n(x) = max(x, 0)^n.  ``beta F_n(x) = F_n(x / T)`` for ``beta = 1 / T^n``, so dividing before
raising keeps float32 finite where ``794^30`` would overflow.  The label-off argument ``h`` does not
depend on alpha, so one (B, 784) x (784, K) product per batch serves all ten classes; the rest is an
elementwise map-reduce over (B, 10, K) that we fuse with ``torch.compile`` where it is available.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dam.environment import resolve_device
from dam.errors import (
    CheckpointError,
    DivergedError,
    InputError,
    RunFolderError,
    check_whole,
    is_finite_number,
    is_whole,
    plain_fields,
    plain_number,
)
from dam.io import atomic_write_bytes, atomic_write_json, read_json_object

NUM_PIXELS = 784
NUM_CLASSES = 10
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class DAMConfig:
    """Everything needed to rebuild a model's architecture; saved as ``config.json`` beside the weights.

    ``n``: power of the rectified polynomial F_n; ``num_memories``: K; ``temperature``: T, in units of the
    energy gap (beta = 1 / T^n); ``num_pixels``, ``num_classes``: 784 and 10 for MNIST.
    """

    n: int
    num_memories: int = 2000
    temperature: float = 540.0
    num_pixels: int = NUM_PIXELS
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        plain_fields(self, ("n", "num_memories", "temperature", "num_pixels", "num_classes"))
        # n = 1 would make F_n' a step function that the kernel's x^(n-1) does not represent.
        if not (is_whole(self.n) and self.n >= 2):
            raise InputError(f"n must be an integer >= 2, got {self.n!r}")
        if not (is_whole(self.num_memories) and self.num_memories >= 1):
            raise InputError(f"num_memories must be a positive integer, got {self.num_memories!r}")
        if not (is_finite_number(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature must be positive and finite, got {self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if not (is_whole(self.num_pixels) and self.num_pixels >= 1):
            raise InputError(f"num_pixels must be a positive integer (784 for 28 x 28), got {self.num_pixels!r}")
        if not (is_whole(self.num_classes) and self.num_classes >= 2):
            raise InputError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")


# ----------------------------------------------------------------------------------------------
# The fused energy-gap kernels.  With v_ext = [v, -1, ..., -1] (B, 794), one product h = v_ext xi^T
# gives every memory's label-off argument.  The kernels take the temperature as a 0-dim tensor so that
# one compiled kernel serves every T of a ramp.
#   h: (B, K),   lab: (10, K) = xi_label^T,   inv_t = 1 / T
# forward:  s[b, a]  = sum_k relu((h[b,k] + 2 lab[a,k]) / T)^n - relu(h[b,k] / T)^n
# backward: dh[b,k]  = n/T (sum_a g[b,a] relu(.)^(n-1) - relu(h/T)^(n-1) sum_a g[b,a])
#           dlab[a,k] = 2n/T sum_b g[b,a] relu(.)^(n-1)
# K is the innermost, contiguous axis so that the reductions vectorise.


def flatten_images(images: Tensor, pixels: int, dtype: torch.dtype | None) -> Tensor:
    """Images shaped (B, pixels), (B, side, side) or (B, 1, side, side) as (B, pixels) of ``dtype`` (None: their
    own floating dtype); InputError names the problem otherwise (the contract every classifier of this package
    shares).  Pixel values are not looked at: see :func:`check_pixels`."""
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
    side = math.isqrt(pixels)
    if images.dim() == 2 and images.shape[1] == pixels:
        flat = images
    elif (images.dim() == 4 and tuple(images.shape[1:]) == (1, side, side)) or (
        images.dim() == 3 and tuple(images.shape[1:]) == (side, side)
    ):
        flat = images.reshape(images.shape[0], pixels)
    else:
        raise InputError(f"images must be shaped (B, {pixels}) or (B, 1, {side}, {side}); got {tuple(images.shape)}")
    if not flat.is_floating_point():
        raise InputError(
            f"images must be floating point in [0, 1], got dtype {flat.dtype} (divide uint8 images by 255 first)"
        )
    return flat if dtype is None else flat.to(dtype)


# Pixels that scores() and the baselines' forward accept: [0, 1] with a wide margin, because searches that
# do not clip (``dam probes --no-clip``) step outside [0, 1]: to [-1.4, 2.1] on small, briefly trained
# DAM_2 to DAM_30 (measured with the default eps and max_steps).  Values beyond (images scaled 0..255 by
# mistake, 1e15, 3e38) are refused rather than turned into overflowing scores.
ACCEPTED_PIXELS = (-10.0, 10.0)
ACCEPTED_NOTE = " (images in [0, 1], with a margin for searches that do not clip)"


def check_pixels(flat: Tensor, low: float, high: float, *, tol: float = 0.0, note: str = "") -> tuple[float, float]:
    """(min, max) of ``flat``; InputError for NaN or infinite pixels or for pixels outside [low, high] (+- tol).

    One device sync.  The extremes are taken in the images' own dtype and compared as Python (float64)
    numbers, so a large finite pixel (3e38 in float32, 1e300 in float64) is reported as out of range with
    its value, never as infinite.
    """
    if not flat.numel():
        return low, low
    lo, hi = torch.stack(torch.aminmax(flat.detach())).tolist()  # NaN propagates into both
    check_pixel_range(lo, hi, low, high, tol=tol, note=note)
    return lo, hi


def check_pixel_range(lo: float, hi: float, low: float, high: float, *, tol: float = 0.0, note: str = "") -> None:
    """InputError unless the pixel extremes ``lo``, ``hi`` are finite and within [low, high] (+- tol)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("images contain NaN or infinite pixels")
    if lo < low - tol or hi > high + tol:
        raise InputError(f"pixels must lie in [{low:g}, {high:g}]{note}; got values in [{lo:.4g}, {hi:.4g}]")


def check_class_indices(what: str, indices: Tensor) -> None:
    """Class indices (labels, a search's targets) in 0 .. NUM_CLASSES - 1; InputError naming ``what`` otherwise."""
    if not len(indices):
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= NUM_CLASSES:
        raise InputError(f"{what} must lie in 0..{NUM_CLASSES - 1}, got {low}..{high}")


def ipow(x: Tensor, n: int) -> Tensor:
    """x**n (n >= 1) by repeated squaring: a few multiplies that fuse, instead of a call to pow()."""
    result: Tensor | None = None
    while True:
        if n & 1:
            result = x if result is None else result * x
        n >>= 1
        if not n:
            return result  # type: ignore[return-value]
        x = x * x


def work_dtype(dtype: torch.dtype, config: DAMConfig, weight_max: float, spin_max: float) -> torch.dtype:
    """The dtype to compute a model's scores in: ``dtype``, or float64 when F_n could overflow it.

    Judged from a bound on |argument| <= 794 max|xi| max(|v|, 1) (``weight_max`` = max|xi|, ``spin_max`` =
    max|v|): the sum over K memories of (arg / T)^n must stay below the dtype's maximum with room for the
    backward pass.  Public so that stacked training (:mod:`dam.training.stacked`) makes the same choice.
    """
    if dtype == torch.float64:
        return dtype
    bound = (config.num_pixels + config.num_classes) * weight_max * max(spin_max, 1.0)
    if bound <= 0:
        return dtype
    log_total = config.n * math.log(bound / config.temperature + 1e-30)
    log_total += math.log(config.num_memories * max(config.n, 1))
    return dtype if log_total < math.log(torch.finfo(dtype).max) - 20.0 else torch.float64


def _gaps_forward(h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> Tensor:
    on = torch.relu((h[:, None, :] + 2.0 * lab[None, :, :]) * inv_t)
    off = torch.relu(h * inv_t)
    return (ipow(on, n) - ipow(off, n)[:, None, :]).sum(dim=2)


BACKWARD_ROWS = 50  # the backward's block of batch rows (dam.training.stacked uses the same, for the same rounding)


def _gaps_backward(g: Tensor, h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> tuple[Tensor, Tensor]:
    # dlab reduces over the batch, which is the outer, strided axis.  Splitting the batch into blocks of
    # 50 rows makes that reduction run over an L2-resident block (partial sums, then a small sum over
    # blocks): 2.4x faster than one reduction over all rows (measured at B = 1000, K = 2000, n = 30).
    rows = BACKWARD_ROWS
    batch, k = h.shape
    hc = h.view(batch // rows, rows, k)
    gc = g.view(batch // rows, rows, g.shape[1])
    on = torch.relu((hc[:, :, None, :] + 2.0 * lab[None, None, :, :]) * inv_t)
    off = torch.relu(hc * inv_t)
    d_on = ipow(on, n - 1) * gc[..., None]
    dh = (d_on.sum(dim=2) - ipow(off, n - 1) * gc.sum(dim=2, keepdim=True)) * (n * inv_t)
    dlab = d_on.sum(dim=1).sum(dim=0) * (2 * n * inv_t)
    return dh.view(batch, k), dlab


def _padded_backward(kernel: Callable[..., tuple[Tensor, Tensor]], g: Tensor, h: Tensor, lab: Tensor,
                     inv_t: Tensor, n: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Pad the batch with zero rows (zero g: no contribution) to a multiple of the kernel's block."""
    batch = h.shape[0]
    pad = -batch % BACKWARD_ROWS
    if pad:
        h = torch.cat([h, h.new_zeros(pad, h.shape[1])])
        g = torch.cat([g, g.new_zeros(pad, g.shape[1])])
    dh, dlab = kernel(g, h, lab, inv_t, n)
    return (dh[:batch] if pad else dh), dlab


_COMPILE_FAILED = False


def compile_failed() -> bool:
    """Whether a ``torch.compile`` failed in this process, so that every fused kernel now runs eagerly."""
    return _COMPILE_FAILED


def fused_kernels_enabled() -> bool:
    """Whether kernels go through ``torch.compile`` (env ``DAM_COMPILE=0`` turns it off)."""
    if _COMPILE_FAILED:
        return False
    return os.environ.get("DAM_COMPILE", "1") not in ("0", "false", "no", "off")


class FusedKernel:
    """``fn`` compiled by torch.compile while :func:`fused_kernels_enabled`, else run eagerly.

    If compilation fails (no C++ compiler, an unsupported backend) every fused kernel falls back to
    eager PyTorch, which is exact but several times slower, with one warning.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        global _COMPILE_FAILED
        if not fused_kernels_enabled():
            return self.fn(*args)
        if self._compiled is None:
            # One compiled variant per (n, dtype, static or dynamic batch): a process that probes four
            # models in two dtypes needs more than dynamo's default of 8 before it would fall back to eager.
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            # dynamic=None: the first batch size compiles a static kernel, a second one recompiles once with
            # the batch dynamic, which then serves every size (attacks shrink their batch to the images left:
            # one recompile per kernel over an APGD-T run, measured)
            self._compiled = torch.compile(self.fn, dynamic=None)
        try:
            return self._compiled(*args)
        except Exception as exc:
            _COMPILE_FAILED = True
            warnings.warn(
                f"torch.compile of {self.fn.__name__} failed ({type(exc).__name__}: {exc}); "
                "falling back to eager PyTorch, which is correct but several times slower.",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args)


_FORWARD = FusedKernel(_gaps_forward)
_BACKWARD = FusedKernel(_gaps_backward)


class _DAMScores(torch.autograd.Function):
    """s = energy gaps of v under xi, with a hand-written backward.

    It recomputes the (B, 10, K) intermediate in backward rather than storing it, and returns the
    gradient of the whole K x 794 matrix from one product, with no slicing of the weights.
    """

    @staticmethod
    def forward(ctx: Any, v: Tensor, xi: Tensor, temperature: float, n: int) -> Tensor:
        pixels, width = v.shape[1], xi.shape[1]
        # v_ext = [v, -1 x 10, 0 x pad]: padded to a multiple of 16 columns because the weight-gradient
        # product dh^T v_ext is ~30% slower with 794 output columns than with 800 (measured, OpenBLAS/MKL).
        padded = -(-width // 16) * 16
        v_ext = torch.cat([v, v.new_full((v.shape[0], width - pixels), -1.0),
                           v.new_zeros((v.shape[0], padded - width))], dim=1)  # fmt: skip
        h = v_ext[:, :width] @ xi.t()
        lab = xi[:, pixels:].t().contiguous()
        inv_t = torch.tensor(1.0 / temperature, dtype=xi.dtype, device=xi.device)
        ctx.save_for_backward(v_ext, xi, h, lab, inv_t)
        ctx.n = n
        return _FORWARD(h, lab, inv_t, n)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        v_ext, xi, h, lab, inv_t = ctx.saved_tensors
        dh, dlab = _padded_backward(_BACKWARD, g.contiguous(), h, lab, inv_t, ctx.n)
        pixels = xi.shape[1] - lab.shape[0]
        dv = dh @ xi[:, :pixels] if ctx.needs_input_grad[0] else None
        dxi = None
        if ctx.needs_input_grad[1]:
            dxi = (dh.t() @ v_ext)[:, : xi.shape[1]]
            dxi[:, pixels:] += dlab.t()
        return dv, dxi, None, None


@torch.no_grad()
def _abs_max(t: Tensor) -> Tensor:
    """max |t| from torch.aminmax: many times faster than t.abs().max() on the CPU (measured)."""
    return torch.stack(torch.aminmax(t.detach())).abs().max()


def dam_scores(v: Tensor, memories: Tensor, n: int, temperature: float) -> Tensor:
    """Scaled energy gaps s (B, 10) of spins v (B, 784) in [-1, 1] under memories xi (K, 794)."""
    return _DAMScores.apply(v, memories, float(temperature), n)


# ----------------------------------------------------------------------------------------------


def check_save_folder(folder: str | os.PathLike[str], overwrite: bool) -> Path:
    """``folder``, made if missing, for a model's ``save``; one that holds a saved model is refused unless
    ``overwrite``."""
    folder = Path(folder)
    if not overwrite and ((folder / WEIGHTS_FILE).exists() or (folder / CONFIG_FILE).exists()):
        raise RunFolderError(
            f"{folder}: holds a saved model already; save into a new folder, or pass overwrite=True to replace it "
            "(a training run there could then not be resumed)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class DenseAssociativeMemory(nn.Module):
    """DAM_n classifier: images in [0, 1] shaped (B, 784) or (B, 1, 28, 28) -> Y in [-1, 1], (B, 10).

    ``memories`` is the K x 794 weight matrix xi: columns 0-783 are the visible part, 784-793 the label
    part.  ``temperature`` is T in pixel units (the paper's beta = 1 / T^n).  ``scores`` (= ``logits``) returns
    the pre-tanh energy gaps, which softmax confidences use; attack libraries get them through
    :func:`as_logits`, the one documented way.

    Constructor: ``n`` (or a whole :class:`DAMConfig`), ``num_memories`` (K), ``temperature`` (T), ``num_pixels``
    and ``num_classes`` as in :class:`DAMConfig`; the memories start N(``init_mean``, ``init_std``) drawn from
    ``generator`` (the global one when None), in ``dtype`` (float32 or float64) on ``device``.  A trained model
    comes from :func:`dam.train` or :meth:`load`.
    """

    def __init__(
        self,
        n: int | DAMConfig,
        num_memories: int | None = None,  # None: 2000
        temperature: float | None = None,  # None: 540
        *,
        num_pixels: int = NUM_PIXELS,
        num_classes: int = NUM_CLASSES,
        init_mean: float = -0.3,
        init_std: float = 0.3,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n, DAMConfig):  # DenseAssociativeMemory(DAMConfig(...)), as MLPClassifier(MLPConfig(...))
            given = (num_memories, temperature, num_pixels, num_classes) != (None, None, NUM_PIXELS, NUM_CLASSES)
            if given:
                raise InputError("give a DAMConfig or the sizes (num_memories, temperature, ...), not both")
            config = n
            n, num_memories, temperature = config.n, config.num_memories, config.temperature
            num_pixels, num_classes = config.num_pixels, config.num_classes
        num_memories = 2000 if num_memories is None else num_memories
        temperature = 540.0 if temperature is None else temperature
        self.config = DAMConfig(
            n=n,
            num_memories=num_memories,
            temperature=temperature,
            num_pixels=num_pixels,
            num_classes=num_classes,
        )
        init_mean, init_std = plain_number(init_mean), plain_number(init_std)
        if not (is_finite_number(init_mean) and is_finite_number(init_std) and init_std >= 0):
            raise InputError(f"init_mean must be finite and init_std finite and >= 0, got {init_mean!r}, {init_std!r}")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        weights = torch.empty(self.config.num_memories, self.config.num_pixels + self.config.num_classes, dtype=dtype)
        weights.normal_(init_mean, init_std, generator=generator)
        self.memories = nn.Parameter(weights.to(resolve_device(device, others=True) if device is not None else None))
        # The loss power m the model was trained with (eq. 3), when known: the probes' searches minimise
        # the same objective.  Set by training and by load() from the run's config.json; not a weight.
        self.loss_power: int | None = None

    # -- read access -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.config.n

    @property
    def temperature(self) -> float:
        return self.config.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        # Training ramps T; the config stays frozen and is replaced so it always matches the model.
        self.config = DAMConfig(**{**asdict(self.config), "temperature": float(value)})

    @property
    def num_memories(self) -> int:
        return self.config.num_memories

    @property
    def visible_memories(self) -> Tensor:
        """(K, 784) view of the visible part of xi."""
        return self.memories[:, : self.config.num_pixels]

    @property
    def label_memories(self) -> Tensor:
        """(K, 10) view of the label part of xi."""
        return self.memories[:, self.config.num_pixels :]

    # -- computation -------------------------------------------------------------------------
    def to_spins(self, images: Tensor) -> Tensor:
        """Images (shape and dtype checked, values not) mapped onto the model's [-1, 1] pixel space, (B, 784)."""
        return 2.0 * self._flatten(images) - 1.0

    def _flatten(self, images: Tensor) -> Tensor:
        return flatten_images(images, self.config.num_pixels, self.memories.dtype)

    def check_images(self, images: Tensor) -> None:
        """Raise InputError for NaN/inf pixels or pixels outside [0, 1] (one device sync; not on hot paths).

        The strict check of real images; :meth:`scores` accepts a margin around [0, 1].
        """
        check_pixels(flatten_images(images, self.config.num_pixels, None), 0.0, 1.0, tol=1e-6)

    def scores_from_spins(self, v: Tensor) -> Tensor:
        """Energy gaps s (B, 10) from pixels already in [-1, 1] (the paper's v), shape (B, 784)."""
        return self._scores(v, float(_abs_max(v)) if v.numel() else 1.0)

    def _scores(self, v: Tensor, vmax: float) -> Tensor:
        xi = self.memories
        work = self._work_dtype(vmax)
        if work == xi.dtype:
            return dam_scores(v.to(xi.dtype), xi, self.config.n, self.config.temperature)
        s = dam_scores(v.to(work), xi.to(work), self.config.n, self.config.temperature)
        big = torch.finfo(xi.dtype).max
        return s.clamp(-big, big).to(xi.dtype)

    def _work_dtype(self, vmax: float) -> torch.dtype:
        """float64 when F_n could overflow the model's dtype (:func:`work_dtype`).  This runs on every
        forward, training steps included."""
        dtype = self.memories.dtype
        if dtype == torch.float64:
            return dtype
        return work_dtype(dtype, self.config, float(_abs_max(self.memories)), vmax)

    def scores(self, images: Tensor) -> Tensor:
        """Pre-tanh scores (scaled energy gaps) of images in [0, 1]: logits for attacks and softmax.

        Input rule: pixels must be finite and lie in ``ACCEPTED_PIXELS`` = [-10, 10], the image range with a
        margin for searches that do not clip (:meth:`check_images` is the strict [0, 1] check).  NaN or
        infinite pixels raise InputError ("NaN or infinite pixels"), finite pixels outside [-10, 10] raise
        InputError naming their min and max.  Scores are never NaN: within the accepted range the model
        computes in float64 where its dtype could overflow, and scores that are still not finite (extreme n
        or T) raise InputError naming the pixel range, or DivergedError where the memories themselves are not
        finite (a training step overflowed).  Costs two device syncs (range, finiteness).
        """
        flat = flatten_images(images, self.config.num_pixels, None)
        if not flat.numel():
            return self._scores(self.to_spins(flat), 1.0)
        lo, hi = check_pixels(flat, *ACCEPTED_PIXELS, note=ACCEPTED_NOTE)
        s = self._scores(self.to_spins(flat), max(abs(2.0 * lo - 1.0), abs(2.0 * hi - 1.0)))
        if not bool(torch.isfinite(s.detach()).all()):
            if not bool(torch.isfinite(self.memories.detach()).all()):  # not the images' fault: say whose it is
                raise DivergedError(
                    f"the model's memories hold NaN or infinity (n = {self.config.n}, T = "
                    f"{self.config.temperature:g}): a training step overflowed; raise T or lower the lr"
                )
            raise InputError(
                f"scores overflow to NaN or infinity for pixels in [{lo:.4g}, {hi:.4g}] "
                f"(n = {self.config.n}, T = {self.config.temperature:g})"
            )
        return s

    def logits(self, images: Tensor) -> Tensor:
        """The logits of this classifier for softmax and attack libraries: the pre-tanh scores.

        Y = tanh(scores) sits at +-1 to within float precision on confidently classified digits, so a loss on
        Y has tiny or exactly zero gradients; the scores rank the classes exactly as Y does and do not
        saturate.  Attack libraries get :func:`as_logits` of a model, which calls this.
        """
        return self.scores(images)

    def forward(self, images: Tensor) -> Tensor:
        """Outputs Y = tanh(scores) in [-1, 1], shape (B, 10) (eq. 1); :meth:`logits` for attacks."""
        return torch.tanh(self.scores(images))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 2000) -> Tensor:
        """Predicted class indices (B,), computed in batches."""
        batch_size = check_whole("batch_size", batch_size)  # an InputError, not range()'s
        out = [self.scores(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=self.memories.device)

    # -- persistence -------------------------------------------------------------------------
    def save(
        self, folder: str | os.PathLike[str], run_info: dict[str, Any] | None = None, *, overwrite: bool = False
    ) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` atomically (no pickle).

        ``run_info`` (training settings, seed, versions) goes into the same config.json, so that no
        moment exists when the file on disk holds the model but not how it was trained.  A folder that holds
        a saved model already is refused (RunFolderError) unless ``overwrite`` (what training does in its own,
        locked run folder): replacing a run's weights and record would leave it unresumable.
        """
        from safetensors.torch import save as st_save

        folder = check_save_folder(folder, overwrite)
        weights = {"memories": self.memories.detach().to("cpu").contiguous()}
        metadata = {"format": "dam", "format_version": str(FORMAT_VERSION)}
        atomic_write_bytes(folder / WEIGHTS_FILE, st_save(weights, metadata=metadata))
        config = {**(run_info or {}), "format_version": FORMAT_VERSION, "model": asdict(self.config)}
        atomic_write_json(folder / CONFIG_FILE, config)
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], *, device: torch.device | str | None = None
    ) -> DenseAssociativeMemory:
        """Rebuild a model from a run folder written by :meth:`save`, on ``device`` ("auto", "cpu", "cuda",
        "cuda:N"; None: the CPU), in eval mode; CheckpointError names what is wrong with a bad folder."""
        target = resolve_device(device, others=True) if device is not None else None
        config, weights, raw = _read_checkpoint(folder)
        model = cls(
            config.n,
            config.num_memories,
            config.temperature,
            num_pixels=config.num_pixels,
            num_classes=config.num_classes,
            dtype=weights.dtype,
        )
        with torch.no_grad():
            model.memories.copy_(weights)
        model.loss_power = _loss_power(raw)
        model.eval()  # no layer behaves differently in training; a loaded model is for use, as users expect
        return model.to(target) if target is not None else model

    def extra_repr(self) -> str:
        c = self.config
        return f"n={c.n}, num_memories={c.num_memories}, temperature={c.temperature:g}"


def _loss_power(raw: dict[str, Any]) -> int | None:
    """The training loss power m a run folder's config.json records (None when it records none)."""
    train = raw.get("train")
    m = train.get("m") if isinstance(train, dict) else None
    return m if isinstance(m, int) and m >= 1 else None


def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[DAMConfig, Tensor]:
    """Read and validate ``config.json`` and ``model.safetensors``; return the config and weights."""
    config, weights, _ = _read_checkpoint(folder)
    return config, weights


def _read_checkpoint(folder: str | os.PathLike[str]) -> tuple[DAMConfig, Tensor, dict[str, Any]]:
    """:func:`load_checkpoint`, with the parsed config.json too (read once)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such run folder")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (a run folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    raw = read_json_object(config_path, f"{folder} is not a run folder")
    if "model" not in raw:
        raise CheckpointError(f"{config_path}: no 'model' section; not a dam run folder")
    if raw.get("kind", "dam") != "dam":
        raise CheckpointError(
            f"{config_path}: holds a {raw['kind']!r} model, not a DAM; load it with dam.runs.load_model"
        )
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: checkpoint format version {version!r}, this dam reads version {FORMAT_VERSION}"
        )
    known = {f.name for f in fields(DAMConfig)}
    model_cfg = raw["model"]
    unknown = set(model_cfg) - known if isinstance(model_cfg, dict) else {"<not a dict>"}
    if unknown:
        raise CheckpointError(f"{config_path}: unknown model settings {sorted(unknown)}")
    try:
        config = DAMConfig(**model_cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid model settings ({exc})") from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: corrupt or not a safetensors file ({exc})") from None
    if set(tensors) != {"memories"}:
        raise CheckpointError(f"{weights_path}: expected one tensor 'memories', found {sorted(tensors)}")
    weights = tensors["memories"]
    expected = (config.num_memories, config.num_pixels + config.num_classes)
    if tuple(weights.shape) != expected or weights.dtype not in (torch.float32, torch.float64):
        raise CheckpointError(
            f"{weights_path}: memories have shape {tuple(weights.shape)} and dtype {weights.dtype}, "
            f"config.json expects a float32 or float64 tensor of shape {expected}"
        )
    if not torch.isfinite(weights).all():
        raise CheckpointError(f"{weights_path}: memories contain NaN or infinite values")
    return config, weights, raw


class Logits(nn.Module):
    """A classifier seen through its logits: same input contract (images in [0, 1]), logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        method = getattr(self.model, "logits", None)
        return method(images) if callable(method) else self.model(images)


def as_logits(model: nn.Module) -> nn.Module:
    """The one way to hand any classifier of this package to an attack library: a module whose forward
    returns logits of images in [0, 1].  For a DAM these are the pre-tanh scores (its forward returns the
    saturating Y = tanh(scores)); for the MLP baselines, their ordinary logits; any other module is taken
    to return logits from its forward.  Idempotent."""
    return model if isinstance(model, Logits) else Logits(model)
