"""The CUDA path agrees with the CPU path.  Skipped where there is no GPU (CI); a GPU session runs these
through benchmarks/gpu_check.sh."""

from __future__ import annotations

import pytest
import torch

from dam.model import DenseAssociativeMemory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pair(n: int, memories: int = 64, seed: int = 0) -> tuple[DenseAssociativeMemory, DenseAssociativeMemory]:
    generator = torch.Generator().manual_seed(seed)
    cpu = DenseAssociativeMemory(n, memories, 300.0, generator=generator)
    cuda = DenseAssociativeMemory(n, memories, 300.0)
    cuda.load_state_dict(cpu.state_dict())
    return cpu, cuda.cuda()


@pytest.mark.parametrize("n", [2, 3, 20, 30])
def test_outputs_and_gradients_match_the_cpu(n: int) -> None:
    cpu, cuda = _pair(n)
    x = torch.rand(257, 784, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (257,), generator=torch.Generator().manual_seed(2))
    for model, images in ((cpu, x), (cuda, x.cuda())):
        loss = (model(images) - torch.nn.functional.one_hot(labels.to(images.device), 10) * 2 + 1).pow(4).sum()
        loss.backward()
    torch.testing.assert_close(cuda(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cuda.memories.grad.cpu(), cpu.memories.grad, rtol=1e-3, atol=1e-6)


def test_one_epoch_on_cuda_matches_the_cpu(tmp_path, mnist_dir) -> None:
    from dam.training import train
    from dam.training.presets import preset

    config = preset("n3", "quick", num_memories=64, epochs=1, train_subset=2000)
    on_cpu = train(config, tmp_path / "cpu", data_dir=mnist_dir.parent, device="cpu", progress=False)
    on_gpu = train(config, tmp_path / "cuda", data_dir=mnist_dir.parent, device="cuda", progress=False)
    # 20 updates of a max-normalised rule: float rounding differs between the devices, so within a tolerance
    torch.testing.assert_close(on_gpu.memories.detach().cpu(), on_cpu.memories.detach(), rtol=1e-2, atol=1e-3)


def test_cuda_graph_epochs_give_the_eager_weights(tmp_path, mnist_dir, monkeypatch) -> None:
    """On a GPU an epoch is captured once as a CUDA graph and replayed: the same kernels on the same buffers,
    so the weights after several epochs are the eager ones, bit for bit; and the capture did not fail."""
    import warnings

    from dam.training import stacked as stacked_module
    from dam.training import train
    from dam.training.presets import preset

    config = preset("n30", "quick", num_memories=64, epochs=4, train_subset=2000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = train(config, tmp_path / "graphs", data_dir=mnist_dir.parent, device="cuda", progress=False)
    assert not [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
    assert stacked_module.cuda_graphs_enabled()  # no capture failed
    monkeypatch.setenv("DAM_CUDA_GRAPHS", "0")
    eager = train(config, tmp_path / "eager", data_dir=mnist_dir.parent, device="cuda", progress=False)
    torch.testing.assert_close(graphs.memories.detach(), eager.memories.detach(), rtol=0, atol=0)
