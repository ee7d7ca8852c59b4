"""Lower and upper bounds on the robust test error of a trained checkpoint (Table 1's layout).

    python certify.py ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
    python certify.py ckpt=... n_points=100 attack=fast mip=false eps.linf=0.05
    python certify.py -m ckpt=... shard=0,1,2,3 num_shards=4
    python certify.py ckpt=... dataset=fmnist              # another dataset of the same input shape
    python certify.py model_file=net.onnx dataset=mnist   # a model trained elsewhere
    python certify.py model_file=zoo/croce-hein-2020/mmr_univ_mnist.mat dataset=mnist   # the paper's own
"""

import sys

import hydra
from omegaconf import DictConfig

from mmru.cli import refuse_model_group_override, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="certify")
def main(cfg: DictConfig) -> float:
    # imported here, not above: the runner pulls in torch and Lightning (seconds), which a refused
    # command line should not wait for
    from mmru.certification.runner import run_certification

    with user_errors():
        summary = run_certification(cfg)
    return summary["worst_case_ub"]


if __name__ == "__main__":
    refuse_model_group_override(sys.argv[1:])
    main()
