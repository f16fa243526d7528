"""What a trainer reports after each optimisation step (progress bars, job status, metadata)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StepStats"]


@dataclass
class StepStats:
    """One training step of :class:`~nerf.trainers.sds.SDSTrainer` or
    :class:`~nerf.trainers.photometric.ReconstructionTrainer`.

    Attributes:
        step: 1-based step number, in [1, total].
        total: the trainer's ``max_steps``.
        loss: the weighted total loss of the step.
        losses: unweighted loss terms by name (``rgb``, ``mask``, ``sds``, ``orient``, ``sparsity``, ``opaque``).
        seconds: wall time of the step, seconds.
        n_samples: samples the renderer evaluated (photometric trainer; 0 where not counted).
    """

    step: int
    total: int
    loss: float
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    n_samples: int = 0
