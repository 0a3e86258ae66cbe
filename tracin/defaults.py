"""The library's defaults, each defined once: the API's keyword arguments and the scripts' flags take them from here.
"""
from .layers import LAST_BIAS, LAST_BLOCK

# `layers` of self-influence: the final affine layer's bias alone detects mislabeled samples best, because the
# weight gradient multiplies the label-dependent error p - y by the label-agnostic feature norm ||h||^2 + 1
# (README, "Detection quality"; bench/detection.py).
SELF_LAYERS = LAST_BIAS
# `layers` of train -> test influence: the last residual unit and the affine layer, so that a proponent must share
# the test sample's features, not only its error direction. bench/explanations.py (digits; tuning seeds 10-12,
# held-out 13-15): with the cosine and these layers, the top-1 proponent is a true example of the predicted class
# for >= 99.2% of the validation samples on every seed (raw TracIn: <= 16%); with the affine layer alone (last),
# 98.3% on the worst seed (docs/explanations.md).
INFLUENCE_LAYERS = LAST_BLOCK
NORMALIZE = "cosine"  # train -> test influence's scores (tracin.normalize; the same benchmark)
TOP_K = 10  # proponents and opponents kept per test sample
METHOD = "batched"  # closed forms and batched per-sample gradients; 'loop' is the original's reference
BATCH_SIZE = 64  # samples per forward/backward
