"""Where a result came from: the code's commit and the hardware, for reports (Table-1 recipes)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def commit() -> str | None:
    """The git commit of the checkout this package runs from (None outside a git checkout).

    A "+dirty" suffix says the working tree had changes, so the commit alone does not
    reproduce the result.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def hardware(device: str | torch.device = "cpu") -> str:
    """A one-line name of the machine a computation ran on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes (model files in recipes: which weights a result came from)."""
    import hashlib

    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
