"""Posed views → GLB (``lift3d reconstruct``) and mesh → posed views (``lift3d render-views``)."""

from lift3d.reconstruct.reconstruct import (
    ReconstructOptions,
    ReconstructResult,
    RenderViewsOptions,
    load_mesh,
    reconstruct,
    render_views,
    to_world,
    turntable,
)

__all__ = ["ReconstructOptions", "ReconstructResult", "RenderViewsOptions", "load_mesh", "reconstruct",
           "render_views", "to_world", "turntable"]
