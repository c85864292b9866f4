"""iht: train neural networks under an exact budget of s nonzero parameters with IHT.

Implements "Learning a Sparse Neural Network using IHT" (Damadi et al., arXiv 2404.18414).
"""

from .certify import Certificate, certify, certify_point
from .errors import EstimateError, NonFiniteError
from .init import random_support, reset_parameters_, sparse_init_
from .lipschitz import L2sEstimate, estimate_l2s, estimate_l2s_fn
from .optim import IHT, iht_update
from .threshold import boundary_tie, hard_threshold, threshold_mask

__version__ = "0.1.0"

__all__ = [
    "IHT",
    "Certificate",
    "EstimateError",
    "L2sEstimate",
    "NonFiniteError",
    "boundary_tie",
    "certify",
    "certify_point",
    "estimate_l2s",
    "estimate_l2s_fn",
    "hard_threshold",
    "iht_update",
    "random_support",
    "reset_parameters_",
    "sparse_init_",
    "threshold_mask",
]
