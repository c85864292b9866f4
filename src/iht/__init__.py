"""iht: train neural networks under an exact budget of s nonzero parameters with IHT.

Implements "Learning a Sparse Neural Network using IHT" (Damadi et al., arXiv 2404.18414).
The public API is re-exported here; importing it loads torch and numpy only (the compiled
kernels, pandas, matplotlib and click load with the parts that use them).
"""

from .budget import Budget, make_budget, plan_budget
from .certify import Certificate, certify, certify_point
from .errors import EstimateError, IhtError, NonFiniteError
from .init import random_support, reset_parameters_, sparse_init_
from .lipschitz import L2sEstimate, estimate_l2s, estimate_l2s_fn
from .optim import IHT, PoolState, iht_step, iht_update
from .schedules import ACDC, Constant, Cubic, DenseWarmup
from .sparse_optimizer import SparseOptimizer
from .threshold import boundary_tie, hard_threshold, threshold_mask

__version__ = "0.2.0"

__all__ = [
    "ACDC",
    "IHT",
    "Budget",
    "Certificate",
    "Constant",
    "Cubic",
    "DenseWarmup",
    "EstimateError",
    "IhtError",
    "L2sEstimate",
    "NonFiniteError",
    "PoolState",
    "SparseOptimizer",
    "boundary_tie",
    "certify",
    "certify_point",
    "estimate_l2s",
    "estimate_l2s_fn",
    "hard_threshold",
    "iht_step",
    "iht_update",
    "make_budget",
    "plan_budget",
    "random_support",
    "reset_parameters_",
    "sparse_init_",
    "threshold_mask",
]
