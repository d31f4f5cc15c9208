"""Turning a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a ``torch.device``, and naming the
machine a measurement ran on."""
from __future__ import annotations

from typing import Union

import torch

__all__ = ["DeviceError", "device_name", "resolve_device"]


class DeviceError(RuntimeError, ValueError):
    """A device setting that names no device, or a CUDA device on a machine without CUDA.

    A RuntimeError (what the trainer has always raised) and a ValueError (what the evaluation code
    raised, and what ``ditlab``'s command line reports as a one-line error).
    """


def resolve_device(name: Union[str, torch.device, None] = "auto", *, setting: str = "train.device") -> torch.device:
    """``auto`` (or None) -> cuda if available else cpu; otherwise the named device.

    A name that is not a device, or a cuda device when CUDA is not available, raises
    :class:`DeviceError` naming ``setting`` (the config key or flag the name came from).
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{setting}={name!r} is not a device ({e}); use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting}={name!r} but CUDA is not available on this machine")
    return device


def device_name(device: Union[str, torch.device]) -> str:
    """What a timed result ran on: the GPU's name ("NVIDIA H100 80GB HBM3") or "cpu"."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
