"""mmru.allocator: with glibc told to keep freed memory, a large block allocated again takes no
page faults; without it (the control, in its own process) it does, so the test shows the setting
at work. Training and certification set it before any work."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import mmru.training
from mmru.certification import runner
from mmru.certification.runner import run_certification
from mmru.training import compose_config, compose_train_config, train

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

# 64 MB blocks: above the largest mmap threshold glibc adapts to (32 MB), so by default each one
# is mapped afresh and faults on first touch; malloc and memset straight from the C library (what
# torch's CPU allocator calls), one thread, so the heap's history is the same on every run
FAULTS = """
import ctypes, resource, sys
from mmru.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def block():
    p = libc.malloc(64 * 2**20)
    ctypes.memset(p, 1, 64 * 2**20)
    libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block()
start = faults()
for _ in range(4):
    block()
print(faults() - start)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_kept_memory_is_reused_without_page_faults():
    assert _faults("keep") < 100
    assert _faults("default") >= 4 * 16384  # control: every page of every block


def test_training_and_certification_keep_freed_memory(tmp_path, monkeypatch):
    calls = []
    for module in (mmru.training, runner):
        monkeypatch.setattr(module, "keep_freed_memory", lambda module=module: calls.append(module.__name__) or True)
    cfg = compose_train_config(["logger=none", "datamodule.limit_train=64", "datamodule.limit_test=64",
                                "batch_size=64", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                                "trainer.enable_model_summary=false"], tmp_path)
    checkpoint = train(cfg)["checkpoint"]
    assert calls == ["mmru.training"]
    run_certification(compose_config("certify", [f"ckpt={checkpoint}", f"out_dir={tmp_path / 'certify'}", "n_points=2",
                                                 "attack=none", "mip=false", "wandb.enabled=false", "progress=false"]))
    assert calls == ["mmru.training", "mmru.certification.runner"]
