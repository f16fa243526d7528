"""Image or prompt → GLB: :class:`Lift3DPipeline`, its steps and where its model stages run."""

from lift3d.pipeline.pipeline import GenerationResult, Lift3DPipeline, ProgressReporter, package_versions

__all__ = ["GenerationResult", "Lift3DPipeline", "ProgressReporter", "package_versions"]
