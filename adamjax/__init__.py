"""adamjax: Adam (Kingma & Ba, ICLR 2015) and its family as composable JAX transformations.

Every optimizer is an :class:`optax.GradientTransformation` composed from primitives, one
per line of the paper's Algorithm 1::

    adam = chain(scale_by_moments(b1, b2),   # m_t, v_t
                 bias_correct(b1, b2),       # m_hat, v_hat
                 precondition(eps),          # m_hat / (sqrt(v_hat) + eps)
                 scale_by_lr(alpha))         # theta_t = theta_{t-1} - alpha * ...
"""

from adamjax._version import __version__
from adamjax.adadelta import AdadeltaState, scale_by_adadelta
from adamjax.adam_family import adamw, amsgrad, nadam, nadamw, radam
from adamjax.aliases import adadelta, adagrad, adam, adamax, rmsprop, sgd
from adamjax.amsgrad import MaxNuState, keep_max_nu
from adamjax.averaging import TemporalAverageState, averaged_params, temporal_averaging
from adamjax.base import (
    CompositionError,
    EmptyState,
    GradientTransformation,
    Moments,
    apply_updates,
)
from adamjax.bias import bias_correct
from adamjax.centered import center
from adamjax.flat import FlatLayout, FlatState, flat_layout, layout_of, ravel
from adamjax.gradient_dtype import keep_gradient_dtype
from adamjax.kahan import KahanSummationState, kahan_summation
from adamjax.lowering import chain
from adamjax.lr import ScheduleState, scale_by_lr
from adamjax.moments import (
    MomentsState,
    SumOfSquaresState,
    scale_by_inf_moment,
    scale_by_moments,
    scale_by_sum_of_squares,
)
from adamjax.momentum import TraceState, trace
from adamjax.native import native_available, native_info
from adamjax.nesterov import bias_correct_nesterov
from adamjax.precondition import precondition
from adamjax.rectify import precondition_rectified
from adamjax.schedules import constant_schedule, inverse_sqrt_schedule
from adamjax.step import FusedTransformation, apply_gradients
from adamjax.weight_decay import add_decayed_weights
from adamjax.wrappers import SkipNonfiniteState, skip_nonfinite

__all__ = [
    "AdadeltaState",
    "CompositionError",
    "EmptyState",
    "FlatLayout",
    "FlatState",
    "FusedTransformation",
    "GradientTransformation",
    "Moments",
    "MomentsState",
    "ScheduleState",
    "SkipNonfiniteState",
    "SumOfSquaresState",
    "TemporalAverageState",
    "TraceState",
    "__version__",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "apply_gradients",
    "apply_updates",
    "averaged_params",
    "bias_correct",
    "chain",
    "constant_schedule",
    "flat_layout",
    "inverse_sqrt_schedule",
    "KahanSummationState",
    "kahan_summation",
    "layout_of",
    "native_available",
    "native_info",
    "precondition",
    "ravel",
    "rmsprop",
    "scale_by_adadelta",
    "scale_by_inf_moment",
    "scale_by_lr",
    "scale_by_moments",
    "scale_by_sum_of_squares",
    "sgd",
    "skip_nonfinite",
    "temporal_averaging",
    "trace",
    # Adam's descendants and their primitives
    "MaxNuState",
    "adamw",
    "amsgrad",
    "nadam",
    "nadamw",
    "radam",
    "add_decayed_weights",
    "bias_correct_nesterov",
    "center",
    "keep_gradient_dtype",
    "keep_max_nu",
    "precondition_rectified",
]
