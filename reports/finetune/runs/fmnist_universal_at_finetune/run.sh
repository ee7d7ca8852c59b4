#!/bin/bash
# The F-MNIST fine-tune chosen on the validation split (reports/finetune/README.md), trained and certified
# from the repository root. Training (one torch thread, ~24 min here), then the weights without optimizer state:
#   python train.py experiment=finetune/fmnist_universal_at_linf datamodule.download=false logger=csv hydra.run.dir=logs/finetune/fmD
# Certification: the first 1000 test points, the published row's cascade and 120 s exact stage, for the union.
set -e
cd "$(dirname "$0")/../../../.."
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice .venv/bin/python certify.py ckpt=reports/finetune/runs/fmnist_universal_at_finetune/model.ckpt \
  n_points=1000 mip_time_limit=120 mip_scope=union mip_workers=2 batch_size=250 \
  out_dir=reports/finetune/runs/fmnist_universal_at_finetune progress=false wandb.enabled=false
