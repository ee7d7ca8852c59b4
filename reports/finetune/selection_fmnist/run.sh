#!/bin/bash
# usage: run.sh <name> <model args...>: 500 validation points, the whole cascade, exact stage at 30 s for the union
cd "$(dirname "$0")/../../.."
name=$1; shift
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice .venv/bin/python certify.py "$@" split=val n_points=500 mip_time_limit=30 \
  mip_scope=union mip_workers=1 batch_size=100 out_dir=reports/finetune/selection_fmnist/$name progress=false wandb.enabled=false \
  > reports/finetune/selection_fmnist/$name.log 2>&1
