"""Argument types that validate where a flag is parsed: a bad value is one argparse line (exit 2) before
any data is read or any compute starts."""

from __future__ import annotations

import argparse
import math

from dam.errors import InputError


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


MAX_SEED = 2**63 - 1  # torch seeds generators with a signed 64-bit integer


def seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be between 0 and 2**63 - 1, got {value}")
    return value


def reproduction_seed(text: str) -> int:
    """A reproduction's seed: its substitute models train from seed + 1, which must be a seed too."""
    value = seed(text)
    if value == MAX_SEED:
        raise argparse.ArgumentTypeError(f"a reproduction's seed must be below 2**63 - 1 (its substitutes train "
                                         f"from seed + 1), got {value}")  # fmt: skip
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def positive_floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of positive finite numbers, e.g. ``0.1,0.2,0.3``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one number")
    return tuple(positive_float(p) for p in parts)


def _budgets(norm: str, text: str) -> tuple[float, ...]:
    from dam.robustness.attacks.standard import check_budgets  # the attacks' own rule, where the flag is parsed

    values = positive_floats(text)
    try:
        check_budgets(norm, values, positive=True)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return values


def linf_budgets(text: str) -> tuple[float, ...]:
    """Comma-separated L-inf budgets in (0, 1] (pixel units of images in [0, 1])."""
    return _budgets("linf", text)


def l2_budgets(text: str) -> tuple[float, ...]:
    """Comma-separated L2 budgets in (0, 28] (28: from a black 28 x 28 image to a white one)."""
    return _budgets("l2", text)


def linf_budgets_or_none(text: str) -> tuple[float, ...]:
    """:func:`linf_budgets`, where ``''`` means none."""
    return linf_budgets(text) if text.strip() else ()


def device(text: str) -> str:
    """auto, cpu, cuda or cuda:N, present on this machine; returned as given (resolved when used)."""
    from dam.environment import resolve_device

    try:
        resolve_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_test_images(flag: str, count: int, runs_dataset: str, minimum: int = 1, why: str = "") -> None:
    """Refuse a count of test images the runs' data set does not hold (checked after the run folders are read,
    since the data set is theirs); ``why`` says what the lower bound is for."""
    from dam.data.sources import DATASETS

    spec = DATASETS[runs_dataset]
    test_size = spec.sizes["test"]
    if not minimum <= count <= test_size:
        reason = f" ({why})" if why else ""
        raise InputError(
            f"{flag} must be between {minimum} and {test_size}{reason}, got {count}: "
            f"the {spec.title} test set has {test_size} images"
        )


def note_unfinished(runs: list[str]) -> None:
    """Say on stderr which runs stop short of their planned epochs (still training, or killed): their
    weights are a checkpoint, and a result measured on them may not be what the finished run gives."""
    import sys

    from dam.runs import finished_epochs

    for run in runs:
        status = finished_epochs(run)
        if status is not None and status[0] < status[1]:
            print(f"note: {run} is unfinished ({status[0]} of {status[1]} epochs done); measuring its last "
                  "checkpoint", file=sys.stderr)  # fmt: skip
