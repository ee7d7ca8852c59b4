#!/bin/bash
# SCIP at 1200 s a point on the l1 points the 120 s passes left undecided (session 8). It runs in a
# copy of the row's certification, whose other records are resumed as they are; points.jsonl here
# holds the 10 redone records, summary.json the copy's summary (its l1 counts over all 1000 points).
set -e
cd "$(dirname "$0")/../../../.."
out=logs/published/fmnist_l1_long
mkdir -p logs/published
[ -d "$out" ] || cp -r reports/published/runs/fmnist_published "$out"
OMP_NUM_THREADS=1 nice .venv/bin/python certify.py model_file=zoo/croce-hein-2020/mmr_univ_fmnist.mat dataset=fmnist n_points=1000 norms=[l1] retry_undecided=true mip_scip_norms=[l1,linf] mip_time_limit=1200 mip_workers=2 batch_size=4 out_dir="$out" progress=false wandb.enabled=false
