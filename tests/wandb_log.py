"""Reads the history of an offline W&B run from its ``run-*.wandb`` transaction log.

Offline runs of this wandb version write no ``wandb-summary.json``; the log is a LevelDB-style
record file (32 KiB blocks, 7-byte record headers) of ``wandb.proto`` Records.
"""

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_history(run_file: Path, timeout: float = 120.0) -> dict[str, list[str]]:
    """Every logged value (as JSON text) of each metric key, in logging order.

    wandb's writer process may still be writing the log after ``finish()`` returned (seen on
    a loaded machine: an empty log right after the run): wait for the run's exit record.
    """
    return _wait_for_exit(run_file, timeout)[0]


def offline_config(run_file: Path, timeout: float = 120.0) -> dict[str, str]:
    """The run's config: each top-level key's last value, as JSON text."""
    return _wait_for_exit(run_file, timeout)[1]


def _wait_for_exit(run_file: Path, timeout: float) -> tuple[dict[str, list[str]], dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        history, config, finished = _read(Path(run_file).read_bytes())
        if finished or time.monotonic() > deadline:
            return history, config
        time.sleep(0.2)


def _read(data: bytes) -> tuple[dict[str, list[str]], dict[str, str], bool]:
    """(history, config, whether the exit record is there) of a transaction log's bytes."""
    pos, pending, history, config, finished = 7, b"", {}, {}, False  # 7: the file header ":W&B" + version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # the tail of a block too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            kind_name = record.WhichOneof("record_type")
            finished |= kind_name == "exit"
            if kind_name == "history":
                for item in record.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(item.value_json)
            if kind_name == "config":
                config.update({item.key or "/".join(item.nested_key): item.value_json for item in record.config.update})
    return history, config, finished
