#!/bin/bash
# usage: retry.sh <name> <model args...>: the union-undecided validation points of <name> again, exact stage at 120 s
cd "$(dirname "$0")/../../.."
name=$1; shift
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice .venv/bin/python certify.py "$@" split=val n_points=500 mip_time_limit=120 \
  mip_scope=union mip_workers=1 batch_size=100 retry_undecided=true out_dir=reports/finetune/selection_fmnist/${name}_120 progress=false \
  wandb.enabled=false > reports/finetune/selection_fmnist/${name}_120.log 2>&1
