"""One GPU per parallel sweep worker, for Hydra's joblib launcher (``hydra/launcher=joblib_gpus``).

Joblib runs the jobs of a multirun in a pool of worker processes that it reuses: a worker
may run job 0 and later job 3. CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when a process first
touches the GPU, so a GPU chosen per *job* (e.g. ``hydra.job.num % n_gpus``) is silently
ignored from a worker's second job on, and two workers can end up sharing one GPU. The GPU
therefore belongs to the *process*: before its first job, every worker claims a free slot
with an exclusive lock file and keeps it until it exits (the kernel drops the lock when a
worker dies, so a replacement worker can take the slot over).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: (slot, open lock file) claimed by this process; the open file holds the lock
_claimed: tuple[int, IO[str]] | None = None


def claim_slot(lock_dir: str | Path, n_slots: int) -> tuple[int, IO[str]]:
    """Take the first of ``n_slots`` slots that no other open lock holds; keep the file open."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(n_slots):
        handle = open(lock_dir / f"gpu{slot}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return slot, handle
    raise RuntimeError(
        f"all {n_slots} GPU slots in {lock_dir} are taken: run at most one parallel job per GPU "
        f"(hydra.launcher.n_jobs)"
    )


class PinGPUPerWorker(Callback):
    """Sets ``CUDA_VISIBLE_DEVICES`` of each sweep worker to one GPU of its own.

    ``num_gpus`` GPUs are shared out: those listed in the launching shell's
    ``CUDA_VISIBLE_DEVICES`` if it is set (ids or UUIDs), else 0 .. num_gpus - 1. The list is
    read here, in the launching process, where Hydra builds the callback.
    """

    def __init__(self, num_gpus: int, lock_dir: str):
        if not isinstance(num_gpus, int) or num_gpus < 1:
            raise ValueError(f"num_gpus must be a positive integer, got {num_gpus!r}")
        inherited = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if inherited and len(inherited) < num_gpus:
            raise ValueError(
                f"{num_gpus} parallel GPU jobs asked for, but CUDA_VISIBLE_DEVICES lists only {len(inherited)} GPUs"
            )
        self.gpus = [d.strip() for d in inherited[:num_gpus]] if inherited else [str(i) for i in range(num_gpus)]
        self.lock_dir = lock_dir

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _claimed
        if _claimed is None:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                raise RuntimeError("CUDA is already initialised in this process: its GPU can no longer be chosen")
            _claimed = claim_slot(self.lock_dir, len(self.gpus))
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[_claimed[0]]
        log.info("job %s runs on GPU %s (process %d)", config.hydra.job.num, os.environ["CUDA_VISIBLE_DEVICES"],
                 os.getpid())
