#!/bin/bash
# SCIP at 1200 s a point on the 10 l1 points the 120 s passes left undecided (session 8)
cd /work/main
OMP_NUM_THREADS=1 nice .venv/bin/python certify.py model_file=zoo/croce-hein-2020/mmr_univ_fmnist.mat dataset=fmnist n_points=1000 norms=[l1] retry_undecided=true mip_scip_norms=[l1,linf] mip_time_limit=1200 mip_workers=2 batch_size=4 out_dir=logs/published/fmnist_l1_long progress=false wandb.enabled=false
