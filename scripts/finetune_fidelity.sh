#!/usr/bin/env bash
# Is mmru's MMR-Universal objective the authors'? Fine-tune their published MNIST model for one epoch
# with MMR-Universal at their end-of-training settings (k_B 5 %, full lambda, lr 5e-5, the model's own
# gammas and lambdas: conf/experiment/finetune/mnist_universal.yaml), then certify the fine-tuned and the
# published model alike (the first 1000 test points, KW + CROWN bounds and strong attacks, no MIP) and
# print both rows. Near the authors' optimum their objective moves the net little; another objective
# would pull it elsewhere.
#
#   scripts/finetune_fidelity.sh                       # from anywhere; writes logs/fidelity/<time>/
#   scripts/finetune_fidelity.sh trainer=gpu           # extra arguments go to train.py
#   OUT=/tmp/fid DRY=1 scripts/finetune_fidelity.sh    # dry run: 5 steps, 5 points, fast attacks (minutes)
#
# Environment: PYTHON (default .venv/bin/python), OUT (output directory), DRY=1, CERTIFY_ARGS (extra
# certify.py arguments for both certifications, e.g. "device=cuda mip_workers=8"), MMRU_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-logs/fidelity/$(date +%Y-%m-%d_%H-%M-%S)}
MAT=zoo/croce-hein-2020/mmr_univ_mnist.mat
N_POINTS=1000 ATTACK=strong TRAIN_DRY=()
if [[ "${DRY:-0}" == 1 ]]; then
    N_POINTS=5 ATTACK=fast TRAIN_DRY=(+trainer.limit_train_batches=5 +trainer.limit_val_batches=2)
fi
read -r -a EXTRA_CERTIFY <<< "${CERTIFY_ARGS:-}"
CERTIFY=(n_points=$N_POINTS attack=$ATTACK mip=false "${EXTRA_CERTIFY[@]}")
mkdir -p "$OUT"

echo "== 1/3 the published model, certified as it is"
"$PY" certify.py model_file="$MAT" dataset=mnist "${CERTIFY[@]}" out_dir="$OUT/published-certify" \
    hydra.run.dir="$OUT/published-certify/hydra"

echo "== 2/3 one epoch of MMR-Universal at the authors' end-of-training settings, then the same certification"
overrides=$(printf '"%s",' "${CERTIFY[@]}")
"$PY" train.py experiment=finetune/mnist_universal init_from="$MAT" trainer.max_epochs=1 "${TRAIN_DRY[@]}" \
    certify_after_training=true "certify_overrides=[${overrides%,}]" hydra.run.dir="$OUT/finetune" "$@"

echo "== 3/3 both rows"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {"published": out / "published-certify" / "summary.json",
        "fine-tuned 1 epoch": out / "finetune" / "certify" / "summary.json"}
norms = ("l1", "l2", "linf")
header = "".join(f"{n + ' ' + b:>10}" for n in norms for b in ("LB", "UB"))
print(f"{'model':<20}{'TE':>7}{header}{'worst UB':>10}")
for name, path in rows.items():
    s = json.loads(path.read_text())
    cells = "".join(f"{100 * s[n][b]:>10.2f}" for n in norms for b in ("lb", "ub"))
    print(f"{name:<20}{100 * s['test_error']:>7.2f}{cells}{100 * s['worst_case_ub']:>10.2f}"
          f"   ({s['n_points']} points, {path})")
EOF
