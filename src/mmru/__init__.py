"""mmru: train ReLU networks provably robust to every l_p perturbation (p >= 1), and certify them.

Implements MMR-Universal (Croce & Hein) and the baselines it is compared with.
``mmru.certify`` certifies a net at given points (:mod:`mmru.certification.api`); it is
imported on first use, so ``import mmru`` stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["certify"]


def __getattr__(name: str):
    if name == "certify":
        from mmru.certification.api import certify

        return certify
    raise AttributeError(f"module 'mmru' has no attribute {name!r}")
