"""Several DAMs trained together (dam.training.train_many) end as each would alone (dam.training.train).

What is compared and how exactly: the stacked step computes every model's numbers with the same operations
in the same order as training alone (on a CPU, the products, tanh and pow model by model in training alone's
shapes: a batched product, and the vectorised tanh and pow of a longer tensor, round otherwise on some CPUs).
The comparisons with training alone still allow float rounding, because compiled kernels are generated
separately for the stacked shapes.  Comparisons of train_many with itself (a resumed run against an
uninterrupted one) are exact.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dam.errors import ConfigError, RunFolderError
from dam.model import work_dtype
from dam.training import TrainConfig, train, train_many
from dam.training.rule import new_model
from dam.training.stacked import StepSettings, group_key, stacked_step
from fakes import tiny_mnist


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("tiny") / "mnist")


def cfg(**kw) -> TrainConfig:
    base = dict(n=3, m=2, num_memories=24, temperature_start=300.0, temperature_end=150.0, ramp_epochs=2,
                epochs=3, batch_size=100, lr=0.04, lr_decay=0.95, momentum=0.8, train_subset=600, seed=7,
                eval_every=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(folder / "train_state.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in lines]


def assert_same_run(got: Path, want: Path, *, exact: bool = False) -> None:
    """Two run folders hold the same run: files, settings, weights, momentum and metrics (timings aside)."""
    listing = lambda f: sorted(p.name for p in f.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert listing(got) == listing(want)
    cg, cw = (json.loads((f / "config.json").read_text()) for f in (got, want))
    for key in ("kind", "model", "train", "seed", "format_version", "data_dir"):
        assert cg[key] == cw[key], key
    (tg, mg), (tw, mw) = state(got), state(want)
    assert mg == mw and set(tg) == set(tw) == {"memories", "velocity"}
    for key in tg:
        if exact:
            assert torch.equal(tg[key], tw[key]), key
        else:
            torch.testing.assert_close(tg[key], tw[key], rtol=1e-4, atol=1e-5)
    if exact:
        assert metrics(got) == metrics(want)
    else:
        for a, b in zip(metrics(got), metrics(want), strict=True):
            assert a == pytest.approx(b, rel=1e-4)


def test_train_many_matches_training_alone(tmp_path, tiny_data) -> None:
    """Seeds (hence minibatch orders and seeded subsets), lr, lr decay, momentum, temperatures, init and
    epoch counts differ within one stacked group."""
    configs = [
        cfg(),
        cfg(seed=8),
        cfg(seed=9, lr=0.02, lr_decay=0.9, momentum=0.6, temperature_start=250.0, temperature_end=100.0,
            init_mean=-0.2, epochs=2),
    ]  # fmt: skip
    assert len({group_key(c) for c in configs}) == 1
    lines: list[str] = []
    models = train_many(configs, [tmp_path / f"many{i}" for i in range(3)], data_dir=tiny_data, log=lines.append)
    assert len(lines) == 3 + 3 + 2 and all(json.loads(x)["run"] for x in lines)
    for i, config in enumerate(configs):
        alone = train(config, tmp_path / f"alone{i}", data_dir=tiny_data)
        assert_same_run(tmp_path / f"many{i}", tmp_path / f"alone{i}")
        torch.testing.assert_close(models[i].memories, alone.memories, rtol=1e-4, atol=1e-5)
        assert models[i].temperature == alone.temperature and models[i].loss_power == 2
    assert not torch.equal(models[0].memories, models[1].memories)


def test_ungroupable_runs_train_together(tmp_path, tiny_data) -> None:
    """Runs of other n, m or K train as separate groups of the same call.  Two runs of one group share a
    seed, hence their seeded subset, and gather their minibatches from one copy of it."""
    configs = [cfg(epochs=2), cfg(n=2, m=3), cfg(num_memories=16, seed=8), cfg(lr=0.02, momentum=0.7)]
    assert len({group_key(c) for c in configs}) == 3
    models = train_many(configs, [tmp_path / f"many{i}" for i in range(4)], data_dir=tiny_data, progress=False)
    for i, config in enumerate(configs):
        train(config, tmp_path / f"alone{i}", data_dir=tiny_data)
        assert_same_run(tmp_path / f"many{i}", tmp_path / f"alone{i}")
    assert [m.n for m in models] == [3, 2, 3, 3] and models[2].num_memories == 16


def test_killed_train_many_resumes_to_the_uninterrupted_run(tmp_path, tiny_data) -> None:
    configs = [cfg(), cfg(seed=8, lr=0.03)]
    full = [tmp_path / "full0", tmp_path / "full1"]
    cut = [tmp_path / "cut0", tmp_path / "cut1"]
    train_many(configs, full, data_dir=tiny_data)
    train_many(configs, cut, data_dir=tiny_data, stop_after=1)
    assert [len(metrics(f)) for f in cut] == [1, 1]
    with pytest.raises(RunFolderError, match="--resume"):
        train_many(configs, cut, data_dir=tiny_data)
    train_many([None, None], cut, data_dir=tiny_data, resume=True)
    for got, want in zip(cut, full, strict=True):
        assert_same_run(got, want, exact=True)


def test_train_and_train_many_resume_each_others_folders(tmp_path, tiny_data) -> None:
    """A folder train() stopped after 2 epochs and one train_many stopped after 1 resume together, one
    epoch apart (as a kill between two folders' writes leaves them); a train_many folder resumes alone."""
    a, b, c = cfg(), cfg(seed=8), cfg(seed=9, momentum=0.7)
    for i, config in enumerate((a, b, c)):
        train(config, tmp_path / f"ref{i}", data_dir=tiny_data)
    train(a, tmp_path / "run0", data_dir=tiny_data, stop_after=2)
    train_many([b, c], [tmp_path / "run1", tmp_path / "run2"], data_dir=tiny_data, stop_after=1)
    train_many([None, b], [tmp_path / "run0", tmp_path / "run1"], data_dir=tiny_data, resume=True)
    train(None, tmp_path / "run2", data_dir=tiny_data, resume=True)
    for i in range(3):
        assert_same_run(tmp_path / f"run{i}", tmp_path / f"ref{i}")


def test_each_model_keeps_its_own_overflow_safe_dtype(tmp_path, tiny_data) -> None:
    """DAM_30 at T = 20 starts in float32 and needs float64 scores (float32 could overflow) once its weights
    grow, so the steps decide one by one; at T = 650 it never does.  In one group each is computed as
    training alone computes it.  In float64 tiny gradients survive where float32 flushes them to zero, and
    the per-memory normalisation makes any nonzero gradient a full step, so computing both models in
    float64 would not be a mere rounding difference."""
    hot = cfg(n=30, m=30, temperature_start=20.0, temperature_end=20.0, ramp_epochs=0, init_mean=0.0,
              init_std=0.05, epochs=2)  # fmt: skip
    cold = replace(hot, temperature_start=650.0, temperature_end=650.0, init_mean=-0.3, init_std=0.3, seed=8)
    assert group_key(hot) == group_key(cold)
    for config, at_start, at_most in ((hot, torch.float32, torch.float64), (cold, torch.float32, torch.float32)):
        initial = new_model(config, torch.device("cpu"))
        weight_max = float(initial.memories.detach().abs().max())
        assert work_dtype(torch.float32, initial.config, weight_max, 1.0) == at_start
        assert work_dtype(torch.float32, initial.config, 1.0, 1.0) == at_most  # once max|xi| reaches 1
    models = train_many([hot, cold], [tmp_path / "hot", tmp_path / "cold"], data_dir=tiny_data)
    for name, config, model in (("hot", hot, models[0]), ("cold", cold, models[1])):
        alone = train(config, tmp_path / f"{name}-alone", data_dir=tiny_data)
        assert_same_run(tmp_path / name, tmp_path / f"{name}-alone")
        assert float((model.memories - alone.memories).detach().abs().max()) < 1e-5
    start = new_model(hot, torch.device("cpu"))  # its seeded initial weights
    assert float((models[0].memories - start.memories).detach().abs().max()) > 0.01, "the hot model trained"
    reached = float(models[0].memories.detach().abs().max())
    assert work_dtype(torch.float32, models[0].config, reached, 1.0) == torch.float64, "and went float64"


def test_bad_requests_fail_before_any_training(tmp_path, tiny_data) -> None:
    with pytest.raises(ConfigError, match="2 training settings for 1 run folders"):
        train_many([cfg(), cfg()], [tmp_path / "a"], data_dir=tiny_data)
    with pytest.raises(ConfigError, match="given twice"):
        train_many([cfg(), cfg(seed=8)], [tmp_path / "a", tmp_path / "." / "a"], data_dir=tiny_data)
    with pytest.raises(ConfigError, match="no run folders"):
        train_many([], [], data_dir=tiny_data)
    train(cfg(epochs=1), tmp_path / "done", data_dir=tiny_data)
    with pytest.raises(RunFolderError, match="already holds a training run"):
        train_many([cfg(), cfg(epochs=1)], [tmp_path / "new", tmp_path / "done"], data_dir=tiny_data)
    assert not (tmp_path / "new" / "metrics.jsonl").exists(), "nothing trained before the refusal"
    with pytest.raises(ConfigError, match="no training settings"):
        train_many([None], [tmp_path / "fresh"], data_dir=tiny_data, resume=True)


def test_compiled_stacked_step_matches_eager(monkeypatch) -> None:
    """The torch.compile path (used for real training) of the stacked kernels computes the same step; a batch
    of 70 exercises the padding of the backward's blocks of 50 rows."""
    models, batch, k = 3, 70, 32
    g = torch.Generator().manual_seed(0)
    memories = (torch.randn(models, k, 794, generator=g) * 0.3 - 0.3).clamp(-1, 1)
    x = torch.rand(models, batch, 784, generator=g)
    y = torch.randint(0, 10, (models, batch), generator=g)

    def column(values: list[float], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1).to(dtype)

    inv_t = column([1 / 200, 1 / 300, 1 / 250], torch.float64)
    settings = StepSettings(inv_t, column([0.04, 0.02, 0.03], torch.float32), column([0.6, 0.8, 0.7], torch.float32))

    def run() -> tuple[torch.Tensor, ...]:
        xi, velocity = memories.clone(), torch.zeros_like(memories)
        losses = [stacked_step(xi, velocity, x, y, 20, 3, settings, torch.float32)[0] for _ in range(2)]
        return xi, velocity, torch.stack(losses)

    monkeypatch.setenv("DAM_COMPILE", "0")
    eager = run()
    monkeypatch.setenv("DAM_COMPILE", "1")
    import dam.model

    compiled = run()
    assert not dam.model.compile_failed(), "torch.compile failed; the fast path is not being tested"
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.equal(eager[0], memories), "the step moved the weights"


def test_replayed_epochs_read_each_epochs_values_from_the_buffers(tmp_path, tiny_data, monkeypatch) -> None:
    """The GPU path captures an epoch's steps once and replays them: every value that changes per epoch (the
    order, 1/T while it ramps, the lr) must reach the steps through the buffers, never through the Python
    values of the epoch the capture saw.  Here a stand-in for the CUDA graph replays, on the CPU, the very
    function captured in the first epoch; the runs must end as without it, bit for bit, also when one run
    ends earlier and the others go on with buffers (and a capture) of their own."""
    from dam.training import stacked

    class Replay:
        def __init__(self, steps) -> None:
            self.steps = steps

        def replay(self) -> None:
            self.steps()

    captured = []

    def run_and_capture(steps):
        steps()
        captured.append(steps)
        return Replay(steps)

    configs = [cfg(epochs=5, ramp_epochs=4), cfg(seed=8, epochs=5, ramp_epochs=4, lr=0.02),
               cfg(seed=9, epochs=3, ramp_epochs=4, lr_decay=0.8)]  # fmt: skip
    train_many(configs, [tmp_path / f"eager{i}" for i in range(3)], data_dir=tiny_data, progress=False)
    monkeypatch.setattr(stacked, "use_cuda_graphs", lambda device: True)
    monkeypatch.setattr(stacked, "run_and_capture", run_and_capture)
    train_many(configs, [tmp_path / f"replayed{i}" for i in range(3)], data_dir=tiny_data, progress=False)
    assert len(captured) == 2  # three runs for epochs 1-3, two for epochs 4-5
    for i in range(3):
        assert_same_run(tmp_path / f"replayed{i}", tmp_path / f"eager{i}", exact=True)
