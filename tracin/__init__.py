"""TracIn (Pruthi et al., NeurIPS 2020) on nnabla: self-influence and train -> test influence from checkpoints.

    import tracin
    ckpts = tracin.load_checkpoints("output/demo/checkpoints")
    scores = tracin.self_influence(ckpts, x_train, y_noisy)                       # (n,)
    runs = tracin.load_checkpoints(["runs/s1", "runs/s2", "runs/s3"])             # an ensemble: scores summed
    result = tracin.influence(ckpts, x_train, y_train, x_test, y_test, top_k=8)   # proponents / opponents
    own = tracin.load_checkpoints(["e1.h5", "e2.h5"], network=net, lrs=[0.1, 0.01])  # any network: net(x) -> logits

See tracin.api for the arguments. Errors are ValueError / FileNotFoundError (tracin.errors), never an exit.
"""
from .api import (  # noqa: F401
    Checkpoint,
    CheckpointEnsemble,
    Checkpoints,
    EnsembleResult,
    InfluenceResult,
    SelfInfluenceResult,
    influence,
    load_checkpoints,
    plan_influence,
    plan_self_influence,
    self_influence,
)
from .errors import InputError, MissingInputError  # noqa: F401

__all__ = ["load_checkpoints", "self_influence", "influence", "plan_self_influence", "plan_influence", "Checkpoint",
           "Checkpoints", "CheckpointEnsemble", "SelfInfluenceResult", "EnsembleResult", "InfluenceResult",
           "InputError", "MissingInputError"]
