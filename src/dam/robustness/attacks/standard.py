"""Standard attacks from Foolbox 3, with this package's calling convention.

An attack is built on one model with its hyperparameters and a list of budgets ``epsilons`` (L-inf or L2
in [0, 1] pixel units), and is called on (images, labels).  It returns an :class:`AttackResult`: the
adversarial images per budget, which of them are misclassified (``success``; a clean image already
misclassified counts as a success at every budget, so 1 - success is robust accuracy), their distances
from the clean images and how many model evaluations per image the attack spent.  The attacks
themselves are Foolbox's (HopSkipJump's gradient estimate aside: Foolbox's is scaled over the batch,
:func:`per_image_hopskipjump`); this module only fixes the model view (:func:`as_logits`), the seeding and
the bookkeeping: every success is checked again here (:func:`verified_success`: inside the budget, in
[0, 1], finite, misclassified when predicted again), and an adversarial within a budget counts within
every larger one (:func:`carry_to_larger_budgets`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dam.errors import InputError, MissingExtraError, check_positive, check_whole, is_finite_number, plain_number
from dam.model import as_logits, check_class_indices, flatten_images

NORMS = ("linf", "l2")

LOGITS_NOTE = (
    "every model is attacked through dam.model.as_logits: a DAM's pre-tanh scores s (Y = tanh(s) saturates "
    "at +-1 and would starve gradient attacks of gradient; s ranks the classes as Y does in exact arithmetic, "
    "and in float32, where tanh rounds to 1 above about 9, Y can tie where s does not), an MLP baseline's logits"
)


def require_foolbox() -> Any:
    """Import Foolbox or say in one line how to get it."""
    try:
        import foolbox
    except ImportError:
        raise MissingExtraError('the standard attacks need Foolbox 3: pip install "dam[attacks]"') from None
    return foolbox


@dataclass
class AttackResult:
    """Per budget (first axis, E) and image (second axis, B); images flattened to 784 pixels in [0, 1]."""

    attack: str
    norm: str
    epsilons: list[float]
    adversarials: Tensor  # (E, B, 784)
    success: Tensor  # (E, B) bool: the model's label differs from the true label
    distances: Tensor  # (E, B) in the attack's norm
    queries_per_image: float  # forward evaluations of the model per image (a gradient costs one more)
    seconds: float = 0.0  # wall time the attack took (what it cost, beside the queries)
    # Per budget: images the attack broke within a smaller budget and not, run on its own, within this one (then
    # counted as broken here, by :func:`carry_to_larger_budgets`).  Carlini et al.'s check that success grows with
    # the budget, measured before the carrying makes it hold.  None where it is not measured: an attack that skips,
    # at a larger budget, the images a smaller one broke, a transfer (its adversarials are another model's), or a
    # minimisation attack whose budgets are one result cut to size (HopSkipJump).
    carried: list[int] | None = None

    def robust_accuracy(self) -> list[float]:
        """Share of the images no budget's attack broke, per budget."""
        return [unbroken_share(s) for s in self.success] if self.success.shape[1] else []


class QueryCounter(nn.Module):
    """Counts the images the attacked model is evaluated on (queries), whatever the attack does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, images: Tensor) -> Tensor:
        self.rows += images.shape[0]
        return self.model(images)


def check_attack_inputs(images: Tensor, labels: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    x = flatten_images(images, 784, torch.float32)
    if x.shape[0] == 0:
        raise InputError("no images to attack: the batch is empty")
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError("attack images must be finite and lie in [0, 1]")
    if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.shape != (x.shape[0],):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise InputError(f"labels must be an int64 tensor of shape ({x.shape[0]},), got {got}")
    check_class_indices("labels", labels)
    return x.to(device), labels.to(device)


def check_budgets(norm: str, epsilons: Sequence[float], *, positive: bool = False) -> list[float]:
    """The norm and budgets of an attack, checked (one InputError naming the problem), as floats."""
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
    if is_finite_number(plain_number(epsilons)):  # one budget: as a list of one
        epsilons = [epsilons]
    try:
        epsilons = [plain_number(e) for e in epsilons]
    except TypeError:
        raise InputError(f"epsilons must be a budget or a list of budgets, got {epsilons!r}") from None
    bad = [e for e in epsilons if not (is_finite_number(e) and (e > 0 if positive else e >= 0))]
    if not epsilons or bad:
        kind = "positive budgets" if positive else "budgets >= 0"
        raise InputError(f"epsilons must be a non-empty list of {kind}, got {list(epsilons)}")
    over = [f"{e:g}" for e in epsilons if e > LARGEST_BUDGET[norm]]
    if over:
        raise InputError(f"{norm} budget {', '.join(over)}: above {LARGEST_BUDGET[norm]:g} ({WHY_LARGEST[norm]}), "
                         "a budget that limits nothing")  # fmt: skip
    repeated = sorted({f"{e:g}" for e in epsilons if list(epsilons).count(e) > 1})
    if repeated:  # attacked twice and merged in silence otherwise
        raise InputError(f"{norm} budget {', '.join(repeated)} given more than once")
    return [float(e) for e in epsilons]


# The largest budget that still limits an attack on images in [0, 1] of 28 x 28 pixels: any image is within
# L-inf 1 and L2 28 of any other, so a larger budget is a typo, not a threat model.
LARGEST_BUDGET = {"linf": 1.0, "l2": 28.0}
WHY_LARGEST = {"linf": "the whole pixel range", "l2": "the distance from a black image to a white one"}


def perturbation_norm(norm: str, a: Tensor, b: Tensor) -> Tensor:
    diff = (a - b).flatten(1)
    return diff.abs().amax(dim=1) if norm == "linf" else diff.norm(dim=1)


# A budget is met within float rounding of x + delta - x and of the L2 rescaling.
BUDGET_ATOL = 1e-6
BUDGET_RTOL = 1e-5


def unbroken_share(broken: Tensor) -> float:
    """The share of images not broken, as a count over the total (17 of 100 is 0.17, with no float residue)."""
    return int((~broken).sum()) / broken.numel()


def within_budget(norm: str, adversarials: Tensor, images: Tensor, eps: float) -> Tensor:
    """Per image: the perturbation's norm is at most eps (within float rounding)."""
    return perturbation_norm(norm, adversarials, images) <= eps * (1 + BUDGET_RTOL) + BUDGET_ATOL


def verified_success(logits: nn.Module, images: Tensor, adversarials: Tensor, labels: Tensor, norm: str,
                     eps: float) -> Tensor:  # fmt: skip
    """Per image: the adversarial is inside the budget, inside [0, 1] and misclassified when re-predicted."""
    with torch.no_grad():
        wrong = logits(adversarials).argmax(dim=1) != labels
    in_box = (adversarials >= 0).all(dim=1) & (adversarials <= 1).all(dim=1)
    return wrong & in_box & within_budget(norm, adversarials, images, eps) & torch.isfinite(adversarials).all(dim=1)


def carry_to_larger_budgets(result: AttackResult) -> AttackResult:
    """An adversarial within a budget is one within every larger budget: where an attack failed at a budget
    but succeeded at a smaller one, that adversarial (and its distance) counts at the larger budget too.  In
    place; returns ``result``, with the number carried per budget in ``result.carried``.  Attacks run each budget
    from scratch, so without this a curve could rise with the budget and the worst case could count an image
    robust that was broken at a smaller budget."""
    order = sorted(range(len(result.epsilons)), key=lambda e: result.epsilons[e])
    result.carried = [0] * len(result.epsilons)
    for smaller, e in itertools.pairwise(order):
        take = result.success[smaller] & ~result.success[e]
        result.carried[e] = int(take.sum())
        if take.any():
            result.success[e] |= take
            result.adversarials[e, take] = result.adversarials[smaller, take]
            result.distances[e, take] = result.distances[smaller, take]
    return result


class Attack:
    """Base: runs a Foolbox attack batch by batch, seeded, on the model's logits."""

    name: ClassVar[str] = "attack"
    uses_gradients: ClassVar[bool] = True
    # Whether each budget is an attack of its own (FGSM, PGD), so that what it broke within a smaller budget and
    # not within a larger one measures the attack (``AttackResult.carried``); not so for a minimisation attack
    # whose budgets are one result cut to size (HopSkipJump)
    runs_each_budget: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, epsilons: Sequence[float], *, norm: str = "linf", batch_size: int = 250, seed: int = 0
    ) -> None:
        self.model, self.norm, self.epsilons = model, norm, check_budgets(norm, epsilons)
        self.batch_size, self.seed = check_whole("batch_size", batch_size), check_whole("seed", seed, -(2**63))

    def _foolbox_attack(self, fb: Any) -> Any:
        raise NotImplementedError

    def _starting_points(self, logits: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
        """(start images (N, 784), which images have one (N,)) for attacks that start from an adversarial."""
        return None

    def _attack_batch(
        self, attack: Any, fmodel: Any, x: Tensor, y: Tensor, starts: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """(adversarials (E, B, 784), success (E, B)) for one batch."""
        _, clipped, success = attack(fmodel, x, y, epsilons=self.epsilons)
        return torch.stack([c.detach() for c in clipped]), success.detach()

    def describe(self) -> dict[str, Any]:
        """Name and hyperparameters, for the records."""
        return {"attack": self.name, "norm": self.norm, "epsilons": self.epsilons, "gradients": self.uses_gradients}

    def __call__(self, images: Tensor, labels: Tensor) -> AttackResult:
        fb = require_foolbox()
        self.model.eval()
        device = next(self.model.parameters()).device
        x, y = check_attack_inputs(images, labels, device)
        counting = QueryCounter(as_logits(self.model)).eval()
        fmodel = fb.PyTorchModel(counting, bounds=(0.0, 1.0), device=device)
        attack = self._foolbox_attack(fb)
        advs, wins = [], []
        started = time.perf_counter()
        # Foolbox draws its random starts and directions from torch's global generator: fork it so the
        # result depends on ``seed`` only and the caller's random state is left alone.
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            starts = self._starting_points(counting, x, y)
            for i in range(0, len(x), self.batch_size):
                part = slice(i, i + self.batch_size)
                start = None if starts is None else (starts[0][part], starts[1][part])
                adv, success = self._attack_batch(attack, fmodel, x[part], y[part], start)
                advs.append(adv)
                wins.append(success)
        adversarials = torch.cat(advs, dim=1)
        # Foolbox's own success, checked here as every attack's is: inside the budget, in [0, 1], finite, and
        # misclassified when predicted again (not counted as queries).
        logits = as_logits(self.model).eval()
        checked = [verified_success(logits, x, a, y, self.norm, eps)
                   for a, eps in zip(adversarials, self.epsilons, strict=True)]  # fmt: skip
        success = torch.cat(wins, dim=1) & torch.stack(checked)
        distances = torch.stack([perturbation_norm(self.norm, a, x) for a in adversarials])
        result = carry_to_larger_budgets(AttackResult(self.name, self.norm, self.epsilons, adversarials.cpu(),
                                                      success.cpu(), distances.cpu(), counting.rows / len(x),
                                                      time.perf_counter() - started))  # fmt: skip
        if not self.runs_each_budget:
            result.carried = None
        return result


class FGSM(Attack):
    """Fast gradient (sign) method: one step of size eps along the loss gradient (L2: the normalised gradient)."""

    name = "fgsm"

    def _foolbox_attack(self, fb: Any) -> Any:
        return fb.attacks.FGSM() if self.norm == "linf" else fb.attacks.FGM()


class PGD(Attack):
    """Projected gradient descent (Madry et al.) on cross-entropy, with a random start inside the ball."""

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        epsilons: Sequence[float],
        *,
        norm: str = "linf",
        steps: int = 40,
        rel_stepsize: float | None = None,
        random_start: bool = True,
        batch_size: int = 250,
        seed: int = 0,
    ) -> None:
        super().__init__(model, epsilons, norm=norm, batch_size=batch_size, seed=seed)
        # Madry et al.'s step: 2.5 eps / steps, so that the steps together can cross the ball from any start.
        steps = check_whole("steps", steps)
        rel_stepsize = 2.5 / steps if rel_stepsize is None else check_positive("rel_stepsize", rel_stepsize)
        self.steps, self.rel_stepsize, self.random_start = steps, rel_stepsize, random_start

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "steps": self.steps, "rel_stepsize": self.rel_stepsize,
                "random_start": self.random_start}  # fmt: skip

    def _foolbox_attack(self, fb: Any) -> Any:
        cls = fb.attacks.LinfPGD if self.norm == "linf" else fb.attacks.L2PGD
        return cls(steps=self.steps, rel_stepsize=self.rel_stepsize, random_start=self.random_start)


class HopSkipJump(Attack):
    """HopSkipJump (Chen, Jordan & Wainwright 2020): decision-based, sees only the predicted labels.

    It needs no gradient of the model at all, so vanishing or useless gradients cannot stop it.  It
    minimises the distance to an adversarial; success at a budget means the distance found is within it.
    """

    name = "hopskipjump"
    runs_each_budget = False  # one minimisation, cut to each budget
    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        epsilons: Sequence[float],
        *,
        norm: str = "linf",
        steps: int = 32,
        initial_gradient_eval_steps: int = 100,
        max_gradient_eval_steps: int = 1000,
        batch_size: int = 250,
        seed: int = 0,
    ) -> None:
        super().__init__(model, epsilons, norm=norm, batch_size=batch_size, seed=seed)
        steps = check_whole("steps", steps)
        initial_gradient_eval_steps = check_whole("initial_gradient_eval_steps", initial_gradient_eval_steps)
        max_gradient_eval_steps = check_whole("max_gradient_eval_steps", max_gradient_eval_steps)
        if max_gradient_eval_steps < initial_gradient_eval_steps:
            raise InputError("HopSkipJump needs steps >= 1 and 1 <= initial <= max gradient-estimation steps")
        self.steps = steps
        self.initial_gradient_eval_steps, self.max_gradient_eval_steps = (
            initial_gradient_eval_steps,
            max_gradient_eval_steps,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "steps": self.steps,
                "initial_gradient_eval_steps": self.initial_gradient_eval_steps,
                "max_gradient_eval_steps": self.max_gradient_eval_steps}  # fmt: skip

    def _starting_points(self, logits: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Start each image from the nearest attacked image that the model labels otherwise.

        Foolbox's default start (blending in uniform noise) fails outright on models that refuse to
        label noise as anything in particular, which is exactly the large-n DAMs; other digits work.  The
        start is sought among all the attacked images, not only the batch's, so that the batch size does
        not change the starts.  An image without any such start (a model that labels every image alike)
        cannot be attacked: it is returned unchanged and counted as not broken.
        """
        with torch.no_grad():
            predicted = torch.cat([logits(x[i : i + self.batch_size]).argmax(dim=1)
                                   for i in range(0, len(x), self.batch_size)])  # fmt: skip
        nearest = torch.empty(len(x), dtype=torch.long, device=x.device)
        startable = torch.empty(len(x), dtype=torch.bool, device=x.device)
        for i in range(0, len(x), 1000):  # rows of the distance matrix, 1000 at a time
            other = predicted[None, :] != y[i : i + 1000, None]  # image j is a valid start for image i
            dist = torch.cdist(x[i : i + 1000], x).masked_fill(~other, float("inf"))
            nearest[i : i + 1000], startable[i : i + 1000] = dist.argmin(dim=1), other.any(dim=1)
        return x[nearest], startable

    def _attack_batch(
        self, attack: Any, fmodel: Any, x: Tensor, y: Tensor, starts: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        assert starts is not None  # (HopSkipJump always has its starting points)
        start, startable = starts
        adv = x[None].repeat(len(self.epsilons), 1, 1)
        success = torch.zeros(len(self.epsilons), len(x), dtype=torch.bool, device=x.device)
        if startable.any():
            _, clipped, won = attack(fmodel, x[startable], y[startable], epsilons=self.epsilons,
                                     starting_points=start[startable])  # fmt: skip
            adv[:, startable] = torch.stack([c.detach() for c in clipped])
            success[:, startable] = won.detach()
        return adv, success

    def _foolbox_attack(self, fb: Any) -> Any:
        return per_image_hopskipjump(fb)(
            steps=self.steps,
            initial_gradient_eval_steps=self.initial_gradient_eval_steps,
            max_gradient_eval_steps=self.max_gradient_eval_steps,
            constraint=self.norm,
        )


def per_image_hopskipjump(fb: Any) -> type:
    """Foolbox's HopSkipJumpAttack with its gradient estimate made per image, as the algorithm defines it.

    Foolbox 3.3.4 scales each probe direction to unit L2 norm over the whole batch (the norm of a
    (batch, pixels) slice), so an image's probe is about 1/sqrt(batch) of the radius delta the algorithm
    asks for, and it scales the estimated gradient over the batch too (an L2 step 1/sqrt(batch) short).
    The attack got weaker as the batch grew: on the cpu DAM_20, 100 images, 10 steps, 400 evaluations,
    batches of 100 left 76% at L-inf 0.2, batches of 20 45%.  Only the estimate is replaced; the rest of
    the attack (start, step-size search, binary search) stays Foolbox's.  The probes are drawn one
    evaluation step at a time and summed, so the memory no longer grows with the evaluations either.
    """
    import eagerpy as ep

    class PerImageHopSkipJump(fb.attacks.HopSkipJumpAttack):  # type: ignore[misc]
        def approximate_gradients(self, is_adversarial: Any, x_advs: Any, steps: int, delta: Any) -> Any:
            x = x_advs.raw
            per_image = (len(x),) + (1,) * (x.dim() - 1)  # a per-image scalar, broadcast over pixels
            radius = delta.raw.reshape(per_image)
            taken_sum = torch.zeros_like(x)  # sum over probes of the direction taken
            signed_sum = torch.zeros_like(x)  # sum over probes of (+-1: adversarial or not) * direction
            adversarial = torch.zeros(per_image, dtype=x.dtype, device=x.device)  # how many probes were
            for _ in range(steps):
                u = torch.randn_like(x) if self.constraint == "l2" else torch.rand_like(x) * 2 - 1
                u = u / (u.flatten(1).norm(dim=1).reshape(per_image) + 1e-12)  # unit L2 norm, per image
                probe = (x + radius * u).clamp(0, 1)
                taken = (probe - x) / (radius + 1e-8)  # the direction after clipping to the image box
                sign = is_adversarial(ep.astensor(probe)).raw.reshape(per_image).to(x.dtype) * 2 - 1
                taken_sum += taken
                signed_sum += sign * taken
                adversarial += sign > 0
            # The estimate is the mean of sign * direction, less the mean sign times the mean direction
            # (a baseline that lowers the variance) unless every probe came out alike.
            mean_sign = 2 * adversarial / steps - 1
            alike = (adversarial == 0) | (adversarial == steps)
            grad = (signed_sum - torch.where(alike, 0.0, mean_sign) * taken_sum) / steps
            return ep.astensor(grad / (grad.flatten(1).norm(dim=1).reshape(per_image) + 1e-12))

    return PerImageHopSkipJump


class Transfer:
    """Adversarials made by ``source_attack`` on another model, shown to ``model`` (a black-box attack).

    Success means ``model`` misclassifies the source's adversarial at that budget; the queries to
    ``model`` are one per image and budget.  ``source_result``: the source attack's result on the same
    images, when already computed (several targets share one source run).
    """

    uses_gradients: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        source_attack: Attack,
        source_name: str = "source",
        source_result: AttackResult | None = None,
    ) -> None:
        self.model, self.source_attack, self.source_result = model, source_attack, source_result
        self.norm, self.epsilons = source_attack.norm, source_attack.epsilons
        self.name = f"transfer:{source_name}"

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm, "epsilons": self.epsilons, "gradients": False,
                "source": self.source_attack.describe()}  # fmt: skip

    def __call__(self, images: Tensor, labels: Tensor) -> AttackResult:
        started = time.perf_counter()
        src = self.source_result
        if src is None:
            src = self.source_attack(images, labels)
        elif src.adversarials.shape[1] != len(images) or src.epsilons != self.epsilons:
            raise InputError("source_result was computed on other images or budgets")
        device = next(self.model.parameters()).device
        logits = as_logits(self.model).eval()
        y = labels.to(device)
        x = images.reshape(len(images), -1).to(device, torch.float32)
        success = torch.stack([verified_success(logits, x, a.to(device), y, self.norm, eps)
                               for a, eps in zip(src.adversarials, self.epsilons, strict=True)]).cpu()  # fmt: skip
        result = carry_to_larger_budgets(AttackResult(self.name, self.norm, self.epsilons, src.adversarials.clone(),
                                                      success, src.distances.clone(), float(len(self.epsilons)),
                                                      time.perf_counter() - started))  # fmt: skip
        # what a smaller budget's adversarial of another model broke and a larger one's did not says nothing of an
        # attack on this model: the budget check is not measured on transfers
        result.carried = None
        return result
