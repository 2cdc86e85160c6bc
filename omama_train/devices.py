"""Which torch device a command runs on when ``--device`` is not given (or is ``auto``), and
the check of one that is. A ``--ray`` run resolves ``auto`` on each worker instead
(:mod:`omama_train.raywork`)."""

from __future__ import annotations

from runtime.errors import OmamaError


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` itself; OmamaError when it names CUDA and torch sees no GPU."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OmamaError(f"--device {device} asked for, but torch sees no CUDA GPU")
    return device


def resolve_device(device: str | None) -> str:
    """The device of a run in this process: None or ``auto`` is :func:`default_device`;
    one naming CUDA is checked (:func:`check_device`)."""
    return check_device(default_device() if device in (None, "auto") else device)
