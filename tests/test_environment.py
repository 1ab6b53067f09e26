from __future__ import annotations

import torch

from dam.environment import flush_denormals


def _denormals_kept(tiny: torch.Tensor) -> torch.Tensor:
    """Per element of ``tiny`` (denormal float32 numbers): whether tiny * 1 came out as the denormal itself.
    Compared as bits: a float comparison would itself read flushed denormals as zero."""
    return (tiny * 1.0).view(torch.int32) == tiny.view(torch.int32)


def test_denormals_are_flushed_in_every_thread_inside_the_block_only() -> None:
    # 2^20 elements: ATen splits the product over every thread of its pool, so a worker left computing on
    # denormals would keep its share of them
    tiny = torch.full((1 << 20,), 1e-39)
    assert int(tiny.view(torch.int32)[0]) != 0 and _denormals_kept(tiny).all()
    with flush_denormals():
        assert not _denormals_kept(tiny).any()
        with flush_denormals():  # nested blocks are one block: the inner end does not restore
            pass
        assert not _denormals_kept(tiny).any()
    assert _denormals_kept(tiny).all()


def test_the_block_ends_on_an_exception() -> None:
    tiny = torch.full((1 << 20,), 1e-39)
    try:
        with flush_denormals():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert _denormals_kept(tiny).all()


def test_dam_flush_denormals_0_computes_on_them(monkeypatch) -> None:
    monkeypatch.setenv("DAM_FLUSH_DENORMALS", "0")
    tiny = torch.full((1 << 20,), 1e-39)
    with flush_denormals():
        assert _denormals_kept(tiny).all()
