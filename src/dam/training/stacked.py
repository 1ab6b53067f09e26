"""The entry points of DAM training: :func:`train` (one run folder) and :func:`train_many` (several in one
process, stacked).  On a CPU :func:`train` runs :class:`dam.training.rule.DAMTrainer` through the loop; on a
GPU it is :func:`train_many` of one run, whose epochs replay as CUDA graphs (:class:`StackedDAMs`).

One DAM of the presets (K = 400 to 2000 memories, minibatches of 100 to 1000) leaves most of a GPU idle:
its products are a few hundred MFLOP per step and every step waits on kernel launches.  Models that share
a shape (same n, m, K, minibatch, data set and dtype) are therefore stacked: their memories form one
(G, K, 794) tensor and each minibatch step runs one batched product (``torch.bmm``) and one fused kernel
for all G of them.  Everything else stays per model: each draws its own minibatches (its seed's epoch
order), has its own temperature, learning-rate schedule and momentum buffer, and writes its own run
folder through the package's one training loop (:func:`dam.training.loop.fit_runs`), in exactly the
format :func:`dam.training.train` writes, so that either can resume the other's folders.

Same result as training alone: the step is the authors' rule computed as :func:`dam.training.minibatch_step`
computes it, elementwise in the same order (:mod:`dam.model`'s kernels, written here for a leading model
axis, with the same blocking of the batch in the backward pass), and the same overflow-safe dtype choice
(:func:`dam.model.work_dtype`).  What may differ is summation order inside the batched products and,
when the kernels are compiled, inside the generated kernels: see ``docs/training.md`` for what is and is
not bit-identical.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dam.environment import resolve_device
from dam.errors import ConfigError
from dam.model import (
    BACKWARD_ROWS,
    DAMConfig,
    DenseAssociativeMemory,
    FusedKernel,
    fused_kernels_enabled,
    ipow,
    work_dtype,
)
from dam.runs import OutputFolder
from dam.training.loop import (
    Run,
    TrainData,
    as_unit_float,
    check_new_run,
    check_settings_type,
    epoch_permutation,
    fit,
    fit_runs,
    prepare_data,
    resolved_data_dir,
)
from dam.training.rule import (
    DAMTrainer,
    TrainConfig,
    dam_loss,
    dam_loss_terms,
    dam_run,
    restart_settings,
    run_settings,
    start_trainer,
    update_memories,
)

# -- the stacked step --------------------------------------------------------------------------------
# Shapes: G models, B examples each, K memories, 10 classes.
#   h: (G, B, K),   lab: (G, 10, K) = xi_label^T per model,   inv_t: (G, 1, 1) = 1 / T per model.
# The formulas are dam.model's energy-gap kernels with a leading model axis, and the same backward blocks of
# BACKWARD_ROWS batch rows: the same partial sums, hence the same rounding.


def _stacked_gaps_forward(h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> Tensor:
    on = torch.relu((h[:, :, None, :] + 2.0 * lab[:, None, :, :]) * inv_t[..., None])
    off = torch.relu(h * inv_t)
    return (ipow(on, n) - ipow(off, n)[:, :, None, :]).sum(dim=3)


def _stacked_gaps_backward(g: Tensor, h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> tuple[Tensor, Tensor]:
    models, batch, k = h.shape
    rows = BACKWARD_ROWS
    hc = h.view(models, batch // rows, rows, k)
    gc = g.view(models, batch // rows, rows, g.shape[2])
    scale = inv_t[..., None]  # (G, 1, 1, 1)
    on = torch.relu((hc[:, :, :, None, :] + 2.0 * lab[:, None, None, :, :]) * scale[..., None])
    off = torch.relu(hc * scale)
    d_on = ipow(on, n - 1) * gc[..., None]
    dh = (d_on.sum(dim=3) - ipow(off, n - 1) * gc.sum(dim=3, keepdim=True)) * (n * scale)
    dlab = d_on.sum(dim=2).sum(dim=1) * (2 * n * inv_t)
    return dh.view(models, batch, k), dlab


_FORWARD = FusedKernel(_stacked_gaps_forward)
_BACKWARD = FusedKernel(_stacked_gaps_backward)


def _model_by_model(h: Tensor) -> bool:
    """Whether to run the kernels one model at a time: eager (uncompiled) on a CPU, where the stacked
    intermediates, G times larger than one model's, fall out of cache (measured 2x slower than G models
    alone).  Same values either way: the kernels are elementwise and reduce within a model."""
    return not fused_kernels_enabled() and h.device.type == "cpu"


def _gaps(h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> Tensor:
    if not _model_by_model(h):
        return _FORWARD(h, lab, inv_t, n)
    return torch.cat([_stacked_gaps_forward(h[g : g + 1], lab[g : g + 1], inv_t[g : g + 1], n) for g in range(len(h))])


def _gap_grads(g: Tensor, h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> tuple[Tensor, Tensor]:
    if not _model_by_model(h):
        return _BACKWARD(g, h, lab, inv_t, n)
    parts = [_stacked_gaps_backward(g[i : i + 1], h[i : i + 1], lab[i : i + 1], inv_t[i : i + 1], n)
             for i in range(len(h))]  # fmt: skip
    return torch.cat([dh for dh, _ in parts]), torch.cat([dlab for _, dlab in parts])


@dataclass(frozen=True)
class StepSettings:
    """Per-model settings of one epoch's steps, each a (G, 1, 1) column: 1 / T in float64 (cast to the
    dtype the scores are computed in, as a Python float would be), lr and momentum in the weights' dtype."""

    inv_t: Tensor
    lr: Tensor
    momentum: Tensor

    def rows(self, index: Tensor) -> StepSettings:
        return StepSettings(self.inv_t[index], self.lr[index], self.momentum[index])


def stacked_step(
    memories: Tensor, velocity: Tensor, x: Tensor, y: Tensor, n: int, m: int, settings: StepSettings,
    work: torch.dtype,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One step of the authors' rule for G models at once, in place on ``memories`` and ``velocity``
    (G, K, 794): images ``x`` (G, B, 784) in [0, 1], labels ``y`` (G, B), scores computed in ``work``
    (the weights' dtype, or float64 where it could overflow).  Returns each model's loss (G,) and the
    outputs (G, B, 10) from before the step, detached, as :func:`dam.training.minibatch_step` does."""
    dtype = memories.dtype
    xi = memories if work == dtype else memories.to(work)
    v = (2.0 * x - 1.0).to(work)
    models, batch, pixels = v.shape
    width = xi.shape[2]
    # v_ext = [v, -1 x 10, 0 x pad], padded to a multiple of 16 columns as in dam.model (faster products).
    padded = -(-width // 16) * 16
    v_ext = torch.cat([v, v.new_full((models, batch, width - pixels), -1.0),
                       v.new_zeros((models, batch, padded - width))], dim=2)  # fmt: skip
    inv_t = settings.inv_t.to(work)
    with torch.no_grad():
        h = _batched_product(v_ext[:, :, :width], xi.transpose(1, 2))
        lab = xi[:, :, pixels:].transpose(1, 2).contiguous()
        scores = _gaps(h, lab, inv_t, n)
    # tanh and the loss by autograd, as in training alone: the same backward formulas, value for value.
    scores.requires_grad_(True)
    with torch.enable_grad():
        big = torch.finfo(dtype).max
        gaps = scores if work == dtype else scores.clamp(-big, big).to(dtype)
        if scores.device.type == "cpu":
            # Model by model, in training alone's shapes: ATen's vectorised tanh and pow on a CPU compute a
            # tensor's last, partial vector otherwise than the full ones, so their last bit depends on the
            # tensor's length (measured: a different gradient after 48 steps of DAM_30).  Costs nothing here.
            out = torch.stack([torch.tanh(gap) for gap in gaps])
            losses = torch.stack([dam_loss(o, labels, m) for o, labels in zip(out.unbind(), y, strict=True)])
        else:
            out = torch.tanh(gaps)
            losses = dam_loss_terms(out, y, m).sum(dim=(1, 2))
        losses.sum().backward()
    with torch.no_grad():
        dh, dlab = _padded_backward(scores.grad.contiguous(), h, lab, inv_t, n)  # type: ignore[union-attr]
        dxi = _batched_product(dh.transpose(1, 2), v_ext)[:, :, :width]
        dxi[:, :, pixels:] += dlab.transpose(1, 2)
        update_memories(memories, dxi.to(dtype), velocity, settings.lr, settings.momentum)
    return losses.detach(), out.detach()


def _batched_product(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for each model: one torch.bmm on a GPU; on a CPU model by model, in training alone's shapes.

    On some CPUs (measured: an AVX-512 Xeon, torch 2.13) the BLAS sums a batched product in another order
    than the single one, and a few epochs of a large-n DAM amplify that last bit past any fixed tolerance.
    Per-model products give training alone's bits at a price: four `quick` DAM_30 on that 2-core Xeon took
    4.38 s per epoch together this way against 3.62 s with bmm (5.48 s one after another)."""
    if a.device.type != "cpu":
        return torch.bmm(a, b)
    return torch.stack([x @ y for x, y in zip(a.unbind(), b.unbind(), strict=True)])


def _padded_backward(g: Tensor, h: Tensor, lab: Tensor, inv_t: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Pad the batch with zero rows (zero g: no contribution) to a multiple of the kernel's block."""
    models, batch, k = h.shape
    pad = -batch % BACKWARD_ROWS
    if pad:
        h = torch.cat([h, h.new_zeros(models, pad, k)], dim=1)
        g = torch.cat([g, g.new_zeros(models, pad, g.shape[2])], dim=1)
    dh, dlab = _gap_grads(g, h, lab, inv_t, n)
    return (dh[:, :batch] if pad else dh), dlab


def scores_dtypes(memories: Tensor, configs: list[DAMConfig], *, worst_case: bool) -> list[torch.dtype]:
    """The dtype each model's scores are computed in, as training it alone would choose
    (:func:`dam.model.work_dtype`): the weights' own, or float64 where F_n could overflow it.

    Training images lie in [0, 1], so |v| <= 1.  With ``worst_case`` the bound is taken for max|xi| <= 1 or
    its present value, whichever is larger: every step clips xi into [-1, 1], so the answer holds for a
    whole epoch and the steps need no device sync to decide.
    """
    dtype = memories.dtype
    if dtype == torch.float64:
        return [dtype] * len(configs)
    maxima = memories.detach().abs().amax(dim=(1, 2)).tolist()  # one sync for all G models
    return [work_dtype(dtype, config, max(weight_max, 1.0) if worst_case else weight_max, 1.0)
            for config, weight_max in zip(configs, maxima, strict=True)]  # fmt: skip


def step_by_dtype(
    memories: Tensor, velocity: Tensor, x: Tensor, y: Tensor, n: int, m: int, settings: StepSettings,
    works: list[torch.dtype],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`stacked_step` with each model's scores in its own dtype ``works[g]``: one stacked step per
    dtype.  Computing a float32 model in float64 with the others would not be a rounding difference: where
    its float32 gradient underflows to zero, a float64 one does not, and the per-memory normalisation turns
    any nonzero gradient into a full step."""
    if len(set(works)) == 1:
        return stacked_step(memories, velocity, x, y, n, m, settings, works[0])
    losses = memories.new_empty(len(works))
    outs = memories.new_empty(*y.shape, 10)
    for work in sorted(set(works), key=str):
        index = torch.tensor([g for g, w in enumerate(works) if w == work], device=memories.device)
        sub_memories, sub_velocity = memories[index], velocity[index]
        loss, out = stacked_step(sub_memories, sub_velocity, x[index], y[index], n, m, settings.rows(index), work)
        memories[index], velocity[index], losses[index], outs[index] = sub_memories, sub_velocity, loss, out
    return losses, outs


# -- a group of runs -----------------------------------------------------------------------------------


def group_key(config: TrainConfig) -> tuple[Any, ...]:
    """Runs whose settings agree on this can share one stacked step: the same shapes (n, m, K, minibatch,
    dtype) and as many training images in each epoch (data set, subset, validation split).  Seeds,
    learning-rate and temperature schedules, momentum, initialisation and epoch counts may differ."""
    return (config.n, config.m, config.num_memories, config.batch_size, config.dtype, config.dataset,
            config.train_subset, config.validation)  # fmt: skip


def cuda_graphs_enabled() -> bool:
    """Whether a GPU epoch of stacked DAMs is replayed as one CUDA graph (env ``DAM_CUDA_GRAPHS=0`` turns it
    off; a capture that failed once turns it off for the process, with a warning)."""
    return not _GRAPHS_FAILED and os.environ.get("DAM_CUDA_GRAPHS", "1") not in ("0", "false", "no", "off")


_GRAPHS_FAILED = False


@dataclass
class EpochBuffers:
    """Everything an epoch's steps read and write, at addresses fixed for the runs trained together, so that
    a CUDA graph captured once can replay every later epoch: the stacked weights and momenta (G, K, 794), the
    per-model settings (G, 1, 1), the epoch's example order (G, N), and the loss and error accumulators (G,)."""

    memories: Tensor
    velocity: Tensor
    settings: StepSettings
    order: Tensor
    which: Tensor
    total_loss: Tensor
    wrong: Tensor
    graph: Any = None  # torch.cuda.CUDAGraph of one whole epoch, captured after the first (eager) one


class StackedDAMs:
    """The epoch step of :func:`dam.training.loop.fit_runs` for DAM runs of one :func:`group_key`.

    The models stay ordinary :class:`~dam.training.rule.DAMTrainer` objects (their folders are written from
    them); an epoch copies the weights and momenta of the runs due into the group's stacked buffers, trains
    them together and copies them back: two copies of G x K x 794 numbers per epoch, nothing next to an
    epoch's hundreds of steps.

    On a GPU the whole epoch (every minibatch step: gather, scores, backward, update) is captured as one CUDA
    graph after its first, eager run, and later epochs replay it: one launch per epoch instead of ~35 per
    step, which is what kept the GPU waiting for the host (an epoch was 13-14x its matrix products, the
    kernels busy a fifth of the time).  A graph replays the same kernels on the same buffers, so the weights
    are the eager ones, bit for bit (tests/test_gpu.py checks it); only the per-epoch values (order, 1/T,
    lr) change, written into the buffers before each replay.  An epoch in which some model needs float64
    scores runs eagerly.
    """

    def __init__(self, runs: list[Run]) -> None:
        self.position = {id(run): i for i, run in enumerate(runs)}
        datasets: list[TrainData] = []
        which = []
        for run in runs:
            j = next((j for j, d in enumerate(datasets) if d is run.data), None)
            if j is None:
                datasets.append(run.data)
                j = len(datasets) - 1
            which.append(j)
        if len({len(d.train_images) for d in datasets}) > 1:
            raise ConfigError("runs trained together need as many training images each")
        # (D, N, 784): one copy per distinct training set (seeded subsets and splits differ by seed), so that
        # one indexing gathers the (G, B, 784) minibatches of all models.
        if len(datasets) == 1:
            self.images, self.labels = datasets[0].train_images[None], datasets[0].train_labels[None]
        else:
            self.images = torch.stack([d.train_images for d in datasets])
            self.labels = torch.stack([d.train_labels for d in datasets])
        self.which = torch.tensor(which, device=self.images.device)
        # One set of buffers (and graph) per set of runs due together: runs that end at different epochs
        # leave a smaller set for the epochs after.
        self.buffers: dict[tuple[int, ...], EpochBuffers] = {}

    def _buffers_for(self, runs: list[Run], trainers: list[DAMTrainer]) -> EpochBuffers:
        key = tuple(self.position[id(run)] for run in runs)
        if key not in self.buffers:
            # (filled from the trainers at the start of every epoch)
            memories = trainers[0].model.memories.detach().new_empty(len(trainers), *trainers[0].model.memories.shape)
            models, device = len(trainers), memories.device

            def column(dtype: torch.dtype) -> Tensor:
                return torch.zeros(models, 1, 1, dtype=dtype, device=device)

            self.buffers[key] = EpochBuffers(
                memories=memories,
                velocity=torch.empty_like(memories),
                settings=StepSettings(column(torch.float64), column(memories.dtype), column(memories.dtype)),
                order=torch.zeros(models, self.images.shape[1], dtype=torch.long, device=device),
                which=self.which[list(key)][:, None],
                total_loss=torch.zeros(models, dtype=torch.float64, device=device),
                wrong=torch.zeros(models, dtype=torch.long, device=device),
            )
        return self.buffers[key]

    def train_epoch(self, epoch: int, runs: list[Run]) -> list[dict[str, Any]]:
        """One epoch of the runs due, together; each run's statistics as :meth:`DAMTrainer.train_epoch`."""
        trainers: list[DAMTrainer] = [run.trainer for run in runs]  # type: ignore[misc]
        configs = [t.config for t in trainers]
        num = self.images.shape[1]
        buf = self._buffers_for(runs, trainers)
        with torch.no_grad():
            for g, trainer in enumerate(trainers):
                trainer.model.temperature = trainer.config.temperature_at(epoch)
                buf.memories[g].copy_(trainer.model.memories)
                buf.velocity[g].copy_(trainer.velocity)
            lrs = [c.lr_at(epoch) for c in configs]
            for target, values in (
                (buf.settings.inv_t, [1.0 / t.model.temperature for t in trainers]),
                (buf.settings.lr, lrs),
                (buf.settings.momentum, [c.momentum for c in configs]),
            ):
                target.copy_(torch.tensor(values, dtype=torch.float64).view(-1, 1, 1))
            buf.order.copy_(torch.stack([epoch_permutation(num, c.seed, epoch) for c in configs]))
        model_configs = [t.model.config for t in trainers]
        # No model needs float64 anywhere in this epoch (the usual case): the steps need not look.
        fixed = scores_dtypes(buf.memories, model_configs, worst_case=True)
        static = all(w == buf.memories.dtype for w in fixed)
        steps = lambda: self._steps(buf, configs[0], model_configs, fixed if static else None)  # noqa: E731
        if not (static and use_cuda_graphs(buf.memories.device)):
            steps()
        elif buf.graph is not None:
            buf.graph.replay()
        else:
            buf.graph = run_and_capture(steps)
        with torch.no_grad():
            for g, trainer in enumerate(trainers):
                trainer.model.memories.copy_(buf.memories[g])
                trainer.velocity.copy_(buf.velocity[g])
        losses, wrongs = buf.total_loss.tolist(), buf.wrong.tolist()
        return [
            {"loss": losses[g] / num, "train_error": wrongs[g] / num, "lr": lrs[g], "temperature": t.model.temperature}
            for g, t in enumerate(trainers)
        ]

    def _steps(self, buf: EpochBuffers, first: TrainConfig, model_configs: list[DAMConfig],
               fixed: list[torch.dtype] | None) -> None:  # fmt: skip
        """Every minibatch step of one epoch on ``buf``, in place; ``fixed``: the scores' dtypes for the
        whole epoch, or None to decide per step (an epoch where some model may need float64)."""
        buf.total_loss.zero_()
        buf.wrong.zero_()
        num, dtype = buf.order.shape[1], buf.memories.dtype
        for start in range(0, num, first.batch_size):
            idx = buf.order[:, start : start + first.batch_size]
            y = self.labels[buf.which, idx]
            x = as_unit_float(self.images[buf.which, idx], dtype)
            works = fixed if fixed is not None else scores_dtypes(buf.memories, model_configs, worst_case=False)
            loss, out = step_by_dtype(buf.memories, buf.velocity, x, y, first.n, first.m, buf.settings, works)
            buf.total_loss += loss
            buf.wrong += (out.argmax(dim=2) != y).sum(dim=1)


def use_cuda_graphs(device: torch.device) -> bool:
    """Whether epochs on ``device`` are replayed as CUDA graphs."""
    return device.type == "cuda" and cuda_graphs_enabled()


def run_and_capture(steps: Callable[[], None]) -> Any:
    """Run ``steps`` once eagerly (compiling the kernels; on a side stream, as capture needs), then capture
    them, not run, as a CUDA graph for the epochs after.  Returns the graph, or None (and graphs off for the
    process, with a warning) where something in them cannot be captured."""
    global _GRAPHS_FAILED
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        steps()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            steps()
    except Exception as exc:  # an operation that syncs with the host, or a library that cannot be captured
        _GRAPHS_FAILED = True
        warnings.warn(
            f"capturing a training epoch as a CUDA graph failed ({type(exc).__name__}: {exc}); training on "
            "without graphs, which gives the same weights more slowly",
            RuntimeWarning,
            stacklevel=3,
        )
        torch.cuda.synchronize()
        return None
    return graph


# -- the entry point ---------------------------------------------------------------------------------------


@dataclass
class _Member:
    folder: Path
    config: TrainConfig
    data_dir: str | None
    trainer: DAMTrainer
    start_epoch: int


def train(
    config: TrainConfig | None,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DenseAssociativeMemory:
    """Train DAM_n per ``config`` into run folder ``out`` and return the model.

    ``resume=True`` continues a run folder from its last saved epoch with its saved settings (``config``
    may then be None, or equal to the saved one but for ``epochs``, to extend a run); on a new folder it
    starts the run.  A folder that holds a run is never overwritten: without ``resume`` it is refused,
    unless ``force``, which moves it aside.  ``stop_after`` ends after that many epochs in total, as a kill
    would.  ``progress=None`` shows a bar on a terminal or in Jupyter.  :func:`dam.training.train_many`
    trains several runs in one process; on a GPU a single run goes through it too (its epochs are CUDA graphs).

    ``device``: "cpu" (default), "auto" (a GPU when there is one), "cuda" or "cuda:N".  ``data_dir``: the
    data set's folder (None: ``$DAM_DATA_DIR``, the cache, or a download; a resumed run keeps its own).
    ``log``: called with each epoch's metrics as one JSON line.
    """
    check_settings_type(config, TrainConfig, "training settings")
    device = resolve_device(device)
    if device.type == "cuda":
        # On a GPU one model alone is host-bound (13-14x its matrix products per epoch, measured on an H100):
        # the stacked step, one model of one, replays each epoch as a CUDA graph.  Same folder, same rule.
        return train_many([config], [out], data_dir=data_dir, device=device, resume=resume, force=force,
                          progress=progress, stop_after=stop_after, log=log)[0]  # fmt: skip
    folder = Path(out)
    config = restart_settings(folder, config, resume)
    check_new_run(config, folder, resume=resume, force=force)
    with OutputFolder(folder, "run folder").writing(resume=resume, force=force) as resuming:
        config = run_settings(folder, config, resuming)
        data_dir = resolved_data_dir(data_dir, folder, resuming)
        data = prepare_data(config.dataset, config.seed, config.train_subset, config.validation, data_dir, device)
        trainer, start_epoch = start_trainer(config, folder, resuming, device)
        run = dam_run(config, folder, trainer, start_epoch, data, device, data_dir)
        fit(trainer, run.plan, run.run_info, data, start_epoch=start_epoch, stop_after=stop_after, progress=progress,
            log=log)  # fmt: skip
    return trainer.model


def train_many(
    configs: Sequence[TrainConfig | None],
    outs: Sequence[str | os.PathLike[str]],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[DenseAssociativeMemory]:
    """Train DAM ``configs[i]`` into run folder ``outs[i]``, all in this process; return the models in order.

    Each folder follows :func:`dam.training.train`'s rules (``resume``, ``force``, ``stop_after`` and
    ``configs[i] = None`` to resume with the saved settings mean the same) and ends with the same files.
    Every folder is locked and checked, and every resumed state read, before any training, so that a
    conflict in the last folder fails before hours of work on the first.

    Runs of one :func:`group_key` train as one stacked model (:class:`StackedDAMs`).  Groups train one
    after another, each to its end: a group is self-contained (its data, its compiled kernel), only one
    group's training data are on the device at a time, and the first models are finished, usable results
    while later groups train.  Interleaving groups per epoch would fill the device no better, since the
    groups' steps run one after the other either way.
    """
    if not isinstance(configs, Sequence) or not isinstance(outs, Sequence) or isinstance(outs, str):
        raise ConfigError("train_many takes a list of training settings and a list of run folders; "
                          "dam.training.train trains one")  # fmt: skip
    for config in configs:
        check_settings_type(config, TrainConfig, "training settings")
    if len(configs) != len(outs):
        raise ConfigError(f"{len(configs)} training settings for {len(outs)} run folders; give one for each")
    if not outs:
        raise ConfigError("no run folders given")
    folders = [Path(out) for out in outs]
    seen: dict[Path, Path] = {}
    for folder in folders:
        if folder.resolve() in seen:
            raise ConfigError(f"run folder {folder} given twice")
        seen[folder.resolve()] = folder
    device = resolve_device(device)
    configs = [restart_settings(folder, config, resume) for config, folder in zip(configs, folders, strict=True)]
    for config, folder in zip(configs, folders, strict=True):  # every new run's settings before any folder is touched
        check_new_run(config, folder, resume=resume, force=force)
    with ExitStack() as held:
        members = []
        for config, folder in zip(configs, folders, strict=True):
            resuming = held.enter_context(OutputFolder(folder, "run folder").writing(resume=resume, force=force))
            settings = run_settings(folder, config, resuming)
            trainer, start_epoch = start_trainer(settings, folder, resuming, device)
            members.append(_Member(folder, settings, resolved_data_dir(data_dir, folder, resuming), trainer,
                                   start_epoch))  # fmt: skip
        groups: dict[tuple[Any, ...], list[_Member]] = {}
        for member in members:
            groups.setdefault(group_key(member.config), []).append(member)
        for group in groups.values():
            runs = _group_runs(group, device)
            first = group[0].config
            desc = f"train n={first.n}" if len(runs) == 1 else f"train {len(runs)} x n={first.n} K={first.num_memories}"
            fit_runs(runs, StackedDAMs(runs).train_epoch, stop_after=stop_after, progress=progress, log=log,
                     desc=desc)  # fmt: skip
    return [member.trainer.model for member in members]


def _group_runs(group: list[_Member], device: torch.device) -> list[Run]:
    """The group's runs, with one copy of each distinct training set (the seed matters only when it picks a
    subset or a validation split)."""
    loaded: dict[tuple[Any, ...], TrainData] = {}
    runs = []
    for m in group:
        c = m.config
        seed = c.seed if c.train_subset is not None or c.validation else None
        key = (c.dataset, m.data_dir, c.train_subset, c.validation, seed)
        if key not in loaded:
            loaded[key] = prepare_data(c.dataset, c.seed, c.train_subset, c.validation, m.data_dir, device)
        runs.append(dam_run(c, m.folder, m.trainer, m.start_epoch, loaded[key], device, m.data_dir))
    return runs
