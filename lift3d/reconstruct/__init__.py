"""Posed views → GLB (``lift3d reconstruct``, ``views-to-3d`` jobs) and mesh → posed views (``lift3d render-views``)."""

from lift3d.reconstruct.reconstruct import ReconstructOptions, ReconstructResult, reconstruct, turntable
from lift3d.reconstruct.render_views import RenderViewsOptions, load_mesh, render_views, to_world

__all__ = ["ReconstructOptions", "ReconstructResult", "RenderViewsOptions", "load_mesh", "reconstruct",
           "render_views", "to_world", "turntable"]
