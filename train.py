"""Train a ReLU network with the scheme chosen by ``regularizer=...``.

    python train.py dataset=mnist regularizer=universal
    python train.py experiment=universal_mnist
    python train.py -m regularizer.lambda_1=1,3 regularizer.gamma_1=1,2
"""

import hydra
from omegaconf import DictConfig

from mmru.cli import user_errors
from mmru.training import objective, train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with user_errors():
        metrics = train(cfg)
        print(f"test error: {100 * metrics['test/error']:.2f}%  checkpoint: {metrics['checkpoint']}")
        return objective(metrics, cfg)


if __name__ == "__main__":
    main()
