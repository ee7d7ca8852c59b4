"""Upper-bound certificates beyond the linear region: bound propagation and exact MIP."""

from mmru.verify.ball import LpBall
from mmru.verify.bounds import METHODS, certify, layer_bounds, margin_lower_bounds, rounding_tolerance
from mmru.verify.mip import MIPResult, MinDistance, mip_min_distance, mip_verify

__all__ = [
    "METHODS",
    "LpBall",
    "MIPResult",
    "MinDistance",
    "certify",
    "layer_bounds",
    "margin_lower_bounds",
    "mip_min_distance",
    "mip_verify",
    "rounding_tolerance",
]
