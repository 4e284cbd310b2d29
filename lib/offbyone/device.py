"""Choosing the device, and the autocast context that goes with it (train, measure, bench)."""
from __future__ import annotations

import contextlib

import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


class DeviceError(ValueError):
    """A device name that is not valid, or a device this machine does not have."""


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """cuda, then mps, then cpu for "auto"; otherwise the device `pref` names (see DEVICES)."""
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not valid_device(pref):
        raise DeviceError(f"device {pref!r} is not one of {', '.join(DEVICES)}")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {pref!r} asked for, but CUDA is not available")
    if pref == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(pref)


def valid_device(name: str) -> bool:
    return name in ("auto", "cpu", "cuda", "mps") or (
        name.startswith("cuda:") and name[5:].isdigit())


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
