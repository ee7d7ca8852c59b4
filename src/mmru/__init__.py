"""mmru: train ReLU networks provably robust to every l_p perturbation (p >= 1), and certify them.

Implements MMR-Universal (Croce & Hein) and the baselines it is compared with.
"""

__version__ = "0.1.0"
