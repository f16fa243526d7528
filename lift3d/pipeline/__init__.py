"""Image or prompt → GLB: :class:`Lift3DPipeline`, its steps, and where its model stages run (in this process,
or on Serve replicas through handles)."""

from lift3d.pipeline.pipeline import RANDOM_WEIGHTS_WARNING, Lift3DPipeline, Lift3DPipelineOutput
from lift3d.pipeline.providers import InProcessStages, StageProvider, Timed

__all__ = ["InProcessStages", "Lift3DPipeline", "Lift3DPipelineOutput", "RANDOM_WEIGHTS_WARNING", "StageProvider",
           "Timed"]
