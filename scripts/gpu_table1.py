"""The paper-recipe Table-1 rows on one lent GPU: a prepared run in two calls of <= 10 minutes.

Rows: MNIST MMR-Universal, MNIST plain, Fashion-MNIST MMR-Universal (conf/experiment/table1/*),
cnn_small, batch 128, 469 steps per epoch, trained with ``trainer=gpu`` (resident training set,
NaN guard read every 50 steps) and, with ``--compile``, ``trainer.compile=true``; then
certified on the machine's CPU cores (``mip_workers=14``; the GPU runs region / bounds /
attacks), then the certification part of ``bench/bench.py``.

Time plan. The device tool allows 15 minutes per session (machine start included) and 10
minutes per command. An epoch is estimated as 469 x (bench step + 1.5 ms for Adam and
Lightning) + 1 s (both overheads are guesses, to be replaced by the first GPU run's figures):

| row, 100 epochs | at 16.5 ms/step (H200, before) | at the 4 ms target |
|---|---|---|
| MNIST MMR-Universal | 944 s | 358 s |
| MNIST plain (1.3 ms/step) | 230 s | 230 s |
| F-MNIST MMR-Universal | 944 s | 358 s |
| fixed per call: wheels, data, imports 30 s; step bench 30 s (``--compile``: +1-3 min); certification bench 60 s | | |

So even at the target the three rows (~950 s) do not all fit in ~780 s of usable device
time: run the headline row first, alone, then what is left, e.g.

    python3 scripts/gpu_table1.py --out $OUT --compile --rows mnist_universal --budget 570
    python3 scripts/gpu_table1.py --out $OUT --compile --rows mnist_plain,fmnist_universal --budget 200 \
        --train-budget 150 --no-bench

The script measures the step first and gives each row ``min(100, what fits in its share of
--train-budget)`` epochs (default: the budget less 180 s), so a slow step yields shortened
rows (epochs in plan.json and in each checkpoint) instead of a run killed mid-way;
certification (1000 points) gets the time left and resumes later on any machine
(``certify.py ckpt=<run>/checkpoints/last.ckpt out_dir=<run>/certify``, same options). On this
project's 2-core CPU an MMR-Universal step takes 0.7-2.4 s (bench/bench.json; shared cores),
so the CPU is no substitute.

Here, before: ``python scripts/gpu_table1.py --prepare`` puts the data (gz, 40 MB) and the
wheels the GPU image lacks (5 MB) under ``.gpu/`` (git-ignored; every device call carries it:
``carry=[".gpu"]``).

What comes back under ``--out``: ``table1_<row>.tar.gz`` (checkpoints, summaries,
certification records, CSV logs), ``bench.json``, ``plan.json`` (budget, epochs per row,
times) and ``log.txt``. Dry run on the CPU (one epoch of 256 points per row, 3 points
certified without attacks; 3.6 minutes on 2 busy cores): ``--dry``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREP = ROOT / ".gpu"
STEPS_PER_EPOCH = 469
ROWS = {"mnist_universal": "mmr_universal", "mnist_plain": "plain_ce", "fmnist_universal": "mmr_universal"}
#: share of the training budget per row (plain training is cheap)
SHARE = {"mnist_universal": 0.4, "mnist_plain": 0.2, "fmnist_universal": 0.4}
#: wheels (Python 3.12) that the GPU image lacks: the training / certification imports
WHEELS = ["hydra-core==1.3.8", "omegaconf==2.3.1", "highspy==1.16.0", "torchattacks==3.5.1",
          "mlxtend==0.25.0"]
#: pure-Python packages published as sdists only: built into wheels here
SDISTS = ["antlr4-python3-runtime==4.9.3"]
DATA = {"MNIST": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte"]}
DATA["FashionMNIST"] = DATA["MNIST"]


def prepare() -> None:
    """Here, before the run: gz data files and wheels under .gpu/ (git-ignored, carried)."""
    exclude = ROOT / ".git" / "info" / "exclude"
    if "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")
    for name, files in DATA.items():
        (PREP / "data" / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            src, dst = ROOT / "data" / name / "raw" / file, PREP / "data" / name / f"{file}.gz"
            if not dst.exists():
                with open(src, "rb") as fin, gzip.open(dst, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(PREP / "whl"),
                    *WHEELS], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(PREP / "whl"), *SDISTS],
                   check=True)


def environment(log) -> dict[str, str]:
    """PYTHONPATH with the repo's src and, where the image lacks them, the carried wheels."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "MMRU_DATA_DIR": str(ROOT / "data")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    probe = [sys.executable, "-c", "import hydra, omegaconf, highspy, torchattacks, mlxtend"]
    if subprocess.run(probe, env=env, capture_output=True).returncode != 0 and (PREP / "whl").is_dir():
        site = "/tmp/mmru_site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", site, *map(str, sorted((PREP / "whl").glob("*.whl")))], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), site, env.get("PYTHONPATH", "")])
        log(f"installed {len(list((PREP / 'whl').glob('*.whl')))} wheels into {site}")
    return env


def unpack_data(log) -> None:
    for name, files in DATA.items():
        raw = ROOT / "data" / name / "raw"
        for file in files:
            gz = PREP / "data" / name / f"{file}.gz"
            if not (raw / file).exists() and gz.exists():
                raw.mkdir(parents=True, exist_ok=True)
                with gzip.open(gz, "rb") as fin, open(raw / file, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                log(f"unpacked {gz.relative_to(ROOT)}")


def epochs_that_fit(seconds: float, step_ms: float) -> int:
    """Epochs of 469 steps in ``seconds``: the step, ~1.5 ms of Lightning and Adam, 1 s per epoch, 30 s fixed."""
    per_epoch = STEPS_PER_EPOCH * (step_ms + 1.5) / 1000 + 1
    return max(1, min(100, int((seconds - 30) / per_epoch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_table1_out")))
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole run (one call: <= 600)")
    parser.add_argument("--train-budget", type=float, default=None, help="seconds for the trainings "
                        "(default: --budget less 180)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows, e.g. fmnist_universal")
    parser.add_argument("--no-bench", action="store_true", help="skip the certification bench (step bench stays)")
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true for the trainings")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--mip-workers", type=int, default=14)
    parser.add_argument("--dry", action="store_true", help="CPU, tiny epochs, few points: tests this script")
    parser.add_argument("--prepare", action="store_true", help="here: data and wheels into .gpu/, then stop")
    args = parser.parse_args()
    if args.prepare:
        return prepare()
    start = time.perf_counter()
    args.train_budget = args.budget - 180 if args.train_budget is None else args.train_budget
    args.out.mkdir(parents=True, exist_ok=True)
    runs = ROOT / "logs" / "gpu_table1"
    logfile = (args.out / "log.txt").open("a")

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - start:6.0f} s] {message}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    def run(cmd: list[str], timeout: float) -> tuple[int, float]:
        log("$ " + " ".join(cmd))
        began = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                  timeout=max(timeout, 1))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
        spent = time.perf_counter() - began
        log(f"  -> exit {rc} after {spent:.0f} s")
        return rc, spent

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    env = environment(log)
    unpack_data(log)
    py = sys.executable
    device = "cpu" if args.dry else "cuda"
    bench_common = ["--device", device, "--repeats", "1" if args.dry else "5"]
    if not args.dry:  # evidence for the sync-free path: CUDA's sync debug mode set to 'error' inside steps
        rc, _ = run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_resident.py", "-k", "gpu_steps"],
                    min(120, left()))
        plan_sync = {"sync_free_test_exit": rc}
    else:
        plan_sync = {}
    bench_train = args.out / "bench_train.json"
    run([py, "bench/bench.py", "--parts", "train", "--out", str(bench_train), *bench_common, "--compile", "off",
         *(["--skip-reference"] if args.dry else [])], min(90, left()))
    steps = json.loads(bench_train.read_text())["train_step"] if bench_train.exists() else {}
    if args.compile and not args.dry:  # separately: a compile that runs long costs only its own figures
        with_compile = args.out / "bench_train_compiled.json"
        run([py, "bench/bench.py", "--parts", "train", "--out", str(with_compile), *bench_common, "--compile", "on",
             "--skip-reference"], min(180, left()))
        if with_compile.exists():
            bench_train.write_text(with_compile.read_text())
            steps = json.loads(with_compile.read_text())["train_step"]
            with_compile.unlink()
    compiled = steps.get("mmr_universal_compiled_default", {}).get("ms")
    eager = steps.get("mmr_universal", {}).get("ms", 16.5)  # the H200's before this work, if the bench failed
    step_ms = {"plain_ce": steps.get("plain_ce", {}).get("ms", 3.0),
               "mmr_universal": compiled if args.compile and compiled else eager}
    rows = [row for row in ROWS if row in args.rows.split(",")]
    shares = {row: SHARE[row] / sum(SHARE[r] for r in rows) for row in rows}
    plan = {"budget_s": args.budget, "train_budget_s": args.train_budget, "compile": args.compile, "dry": args.dry,
            "step_ms_measured": step_ms, **plan_sync, "rows": {}}
    for row in rows:
        epochs = 1 if args.dry else epochs_that_fit(shares[row] * args.train_budget, step_ms[ROWS[row]])
        overrides = [f"experiment=table1/{row}", f"trainer.max_epochs={epochs}", "logger=csv",
                     "certify_after_training=false", f"hydra.run.dir={runs / row}", f"paths.data_dir={ROOT / 'data'}",
                     "trainer.enable_progress_bar=false"]
        if args.dry:
            overrides += ["trainer=cpu", "trainer.resident_data=true", "datamodule.limit_train=256",
                          "datamodule.limit_test=64", "trainer.check_finite_every_n_steps=2"]
        else:
            overrides += ["trainer=gpu", f"trainer.compile={str(args.compile).lower()}"]
        rc, spent = run([py, "train.py", *overrides], min(left() - 60, 2 * shares[row] * args.train_budget))
        plan["rows"][row] = {"epochs": epochs, "paper_recipe": epochs == 100 and not args.dry, "exit": rc,
                             "train_seconds": spent}
    reserve = 80  # seconds kept for the certification bench and the packing
    for i, row in enumerate(rows):
        ckpt = runs / row / "checkpoints" / "last.ckpt"
        share = (left() - reserve) / (len(rows) - i)  # what is left, shared fairly among the rows still to do
        if not ckpt.exists() or share < 20:
            continue
        points = 3 if args.dry else args.points
        cmd = [py, "certify.py", f"ckpt={ckpt}", f"out_dir={runs / row / 'certify'}", f"n_points={points}",
               f"device={device}", f"mip_workers={2 if args.dry else args.mip_workers}", "wandb.enabled=false",
               "progress=false", f"data_dir={ROOT / 'data'}"]
        cmd += ["attack=none", "mip_time_limit=2"] if args.dry else []
        rc, spent = run(cmd, share)
        plan["rows"][row].update({"certify_exit": rc, "certify_seconds": spent, "certify_points": points})
    best = runs / rows[0] / "checkpoints" / "last.ckpt"
    if best.exists() and left() > 20 and not args.no_bench:
        run([py, "bench/bench.py", "--parts", "certify", "--ckpt", str(best), "--data-dir", str(ROOT / "data"),
             "--out", str(args.out / "bench_certify.json"), "--points", "3" if args.dry else "20",
             "--mip-time-limit", "2" if args.dry else "10",
             "--mip-workers", "2" if args.dry else str(args.mip_workers), *bench_common,
             *(["--attack", "none"] if args.dry else [])], left() - 10)
    _merge_bench(args.out)
    plan["wall_seconds"] = time.perf_counter() - start
    (args.out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    for row in rows:  # one archive per row: each file that comes back may hold at most 16 MB
        if (runs / row).is_dir():
            with tarfile.open(args.out / f"table1_{row}.tar.gz", "w:gz") as tar:
                tar.add(runs / row, arcname=f"gpu_table1/{row}")
    log(f"done: {json.dumps(plan['rows'])}")


def _merge_bench(out: Path) -> None:
    """bench_train.json + bench_certify.json -> bench.json (the shape ``make bench`` writes)."""
    parts = [json.loads(p.read_text()) for p in (out / "bench_train.json", out / "bench_certify.json") if p.exists()]
    if parts:
        merged = {k: v for part in parts for k, v in part.items() if k != "ratios"}
        merged["ratios"] = {k: v for part in parts for k, v in part.get("ratios", {}).items()}
        (out / "bench.json").write_text(json.dumps(merged, indent=2) + "\n")
        for name in ("bench_train.json", "bench_certify.json"):
            (out / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
