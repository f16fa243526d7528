"""Feed-forward reconstruction: one image → a 3D field in seconds (TripoSR; SF3D and SPAR3D would slot in beside).

Modules: ``base`` (the :class:`FeedForwardModel` protocol, :data:`FEEDFORWARD_MODELS`), ``framing`` (the input
recentred at a foreground ratio; lift3d's reference camera the fields are aligned to), ``triposr`` (the model).
"""

from lift3d.stages.feedforward.base import FEEDFORWARD_MODELS, FeedForwardModel, feedforward_class
from lift3d.stages.feedforward.framing import LIFT3D_REFERENCE_VIEW
from lift3d.stages.feedforward.triposr import TripoSR

__all__ = ["FEEDFORWARD_MODELS", "LIFT3D_REFERENCE_VIEW", "FeedForwardModel", "TripoSR", "feedforward_class"]
