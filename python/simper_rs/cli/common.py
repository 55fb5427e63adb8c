"""What every ``simper-rs`` command shares: the user-facing error, processes, devices, offline mode."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Tuple

__all__ = ["CommandError", "world", "device_name", "usable_device", "bf16_supported", "offline", "progress"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def world() -> Tuple[int, int]:
    """(processes, this process's rank) when started by accelerate launch / torchrun, else (1, 0)."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def device_name(name: str) -> str:
    """``name`` with ``auto`` resolved: ``cuda`` when torch sees a CUDA device, else ``cpu``."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_device(name: str, processes: int = 1):
    """The ``torch.device`` for ``--device name`` (``auto`` resolved), checked by allocating on it.

    Under several processes a bare ``cuda`` means this process's GPU (``LOCAL_RANK``).
    """
    import torch

    try:
        device = torch.device(device_name(name))
        if device.type == "cuda" and device.index is None and processes > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as err:
        raise CommandError(f"--device: {name} is not usable here ({str(err).splitlines()[0]})") from None
    return device


def bf16_supported(device_type: str) -> bool:
    """Whether bfloat16 mixed precision is the natural choice on this kind of device: a CUDA GPU
    that supports it. (CPUs run bfloat16 too, but most run it slower than float32.)"""
    import torch

    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Run the body with the Hugging Face libraries offline (models, tokenizers and data sets come
    from local folders and the local cache only), unless the user set these variables; the
    environment is restored afterwards. Libraries read the variables when first imported, so this
    wraps a command from its start."""
    names = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    saved = {name: os.environ.get(name) for name in names}
    for name, default in names.items():
        os.environ.setdefault(name, default)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def progress(iterable, description: str, disable: bool = False, **kwargs):
    """A tqdm progress bar on the first process (the iterable itself where tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=description, dynamic_ncols=True, disable=disable or world()[1] != 0, **kwargs)
