"""The feed-forward path: one pass of a reconstruction model (TripoSR) → a field → marching cubes → textured GLB.

Used by ``method="fast"`` jobs (:class:`~lift3d.pipeline.pipeline.Lift3DPipeline`), by ``fast+sds`` for the
mesh-free part (the field initialises the NeRF there) and by the synchronous ``POST /v2beta/3d/stable-fast-3d``
endpoint (:func:`fast_asset_glb`; :class:`InProcessFastAssets` in one process, the feed-forward deployment's
``asset`` method in the Serve graph).

Unlike TripoSR's own export (vertex colours), the GLB carries an xatlas UV atlas with the field's albedo baked into
a texture (:mod:`nerf.texture`), and the mesh can be remeshed to regular triangles (:mod:`nerf.remesh`) or
decimated to a vertex budget, as Stability's Stable Fast 3D API offers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import trimesh
from PIL import Image

from lift3d.io.encoded import EncodedImage
from lift3d.params.fast3d import FastAssetParams
from lift3d.pipeline.providers import StageModels, Timed
from lift3d.pipeline.steps import prepare_input
from lift3d.presets import FastPreset, ModelPreset
from lift3d.stages.feedforward import FeedForwardModel
from nerf.mesh import EmptyIsosurfaceError, IsosurfaceConfig, extract_mesh
from nerf.remesh import remesh_triangles
from nerf.texture import bake_texture, decimate, textured_glb_bytes, unwrap
from nerf.triplane import TriplaneField

__all__ = ["FAST_INPUT_SIZE", "FastAsset", "InProcessFastAssets", "TEXTURE_MAX_FACES", "fast_asset_glb",
           "field_mesh"]

logger = logging.getLogger(__name__)

FAST_INPUT_SIZE = 512
"""Side in pixels of the recentred cut-out handed to the model (TripoSR's input resolution, ``config.yaml``
``cond_image_size``), so the image is not shrunk to Zero123's 256² first."""

TEXTURE_MAX_FACES = 50_000
"""The mesh is decimated to at most this many faces before unwrapping (xatlas takes ~12 s at 50k faces on one core;
the same budget as ``model_textured.glb``, :class:`lift3d.io.mesh_assets.MeshExportOptions`)."""


@dataclass
class FastAsset:
    """One synchronous fast-3D result.

    Attributes:
        glb: the UV-textured binary glTF (y-up, recentred), bytes.
        metadata: ``vertices``, ``faces``, ``texture_resolution``, ``remesh``, ``isosurface_threshold``,
            ``model`` (``name``, ``source``, ``random_weights``) and ``timings_s`` per step.
    """

    glb: bytes
    metadata: dict[str, Any] = field(default_factory=dict)


def field_mesh(field_: TriplaneField, fast: FastPreset) -> trimesh.Trimesh:
    """Marching cubes on a feed-forward field at ``fast.isosurface_resolution`` (coarse to fine), at
    ``fast.isosurface_threshold`` or else the model's recommended density; vertex colours from the field's albedo.
    If no surface reaches that density (random weights, an unusable input), it retries at the mean density over
    the grid (``"auto"``) with a warning, as :func:`lift3d.pipeline.steps.extract_field_mesh` does.
    ``mesh.metadata`` gets ``isosurface_threshold`` (the one used, a float or ``"auto"``) and
    ``isosurface_threshold_source`` (``"preset"``, ``"model"`` or ``"auto"``).

    Raises:
        nerf.mesh.EmptyIsosurfaceError: not even the mean density gives a surface (a constant field).
    """
    threshold, source = fast.isosurface_threshold, "preset"
    if threshold is None:
        threshold, source = float(field_.isosurface_threshold), "model"
    device = field_.planes.device

    def extract(value: float | str) -> trimesh.Trimesh:
        config = IsosurfaceConfig(resolution=fast.isosurface_resolution, threshold=value)
        return extract_mesh(field_.density, field_.radius, config, color_fn=field_.albedo, device=device)

    try:
        mesh = extract(threshold)
    except EmptyIsosurfaceError as exc:
        logger.warning("%s Falling back to the automatic threshold (mean density).", exc)
        mesh, threshold, source = extract("auto"), "auto", "auto"
    mesh.metadata.update(isosurface_threshold=threshold, isosurface_threshold_source=source)
    return mesh


def fast_asset_glb(model: FeedForwardModel, rgba: Image.Image, params: FastAssetParams, fast: FastPreset
                   ) -> FastAsset:
    """The synchronous endpoint's work after background removal, on ``model``'s device.

    Steps: (1) the model's field from ``rgba`` at ``params.foreground_ratio``; (2) marching cubes
    (:func:`field_mesh`); (3) ``remesh="triangle"``: isotropic remeshing to about ``vertex_count`` vertices (or the
    mesh's own edge length); otherwise a ``vertex_count`` other than −1 decimates to about that many vertices
    (2 × vertex_count faces); (4) at most :data:`TEXTURE_MAX_FACES` faces, xatlas unwrap, the field's albedo baked
    at ``texture_resolution``² texels; (5) a PBR GLB, y-up, recentred.

    Args:
        model: a loaded feed-forward model (:class:`lift3d.stages.feedforward.FeedForwardModel`).
        rgba: the object cut-out (alpha = mask), any size.
        params: the request's options (validated: ``remesh`` is ``none`` or ``triangle``).
        fast: the preset's marching-cubes settings.

    Raises:
        nerf.mesh.EmptyIsosurfaceError: the field is constant (no surface even at its mean density).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    field_ = model(rgba, foreground_ratio=params.foreground_ratio)
    timings["feedforward"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        mesh = field_mesh(field_, fast)
        threshold = mesh.metadata["isosurface_threshold"]
        target_vertices = None if params.vertex_count == -1 else params.vertex_count
        if params.remesh == "triangle":
            mesh = remesh_triangles(mesh, target_vertices=target_vertices)
        elif target_vertices is not None and len(mesh.vertices) > target_vertices:
            mesh = decimate(mesh, 2 * target_vertices)
        mesh = decimate(mesh, TEXTURE_MAX_FACES)
        baked = bake_texture(unwrap(mesh, size=params.texture_resolution), field_.albedo,
                             size=params.texture_resolution)
    glb = textured_glb_bytes(baked.mesh, baked.image, baked.uv, z_up_to_y_up=True, recenter=True)
    timings["mesh_export"] = time.perf_counter() - start
    metadata = {
        "vertices": len(baked.mesh.vertices),
        "faces": len(baked.mesh.faces),
        "texture_resolution": params.texture_resolution,
        "remesh": params.remesh,
        "isosurface_threshold": threshold,
        "model": {"name": model.name, "source": model.source, "random_weights": bool(model.random_weights)},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return FastAsset(glb, metadata)


class InProcessFastAssets:
    """The synchronous fast-3D call on models loaded in this process (``lift3d playground``, tests): background
    removal, then :func:`fast_asset_glb`.

    Examples:
        >>> assets = InProcessFastAssets(get_preset("tiny"))
        >>> out = assets(EncodedImage.from_image(Image.open("examples/dragon2_rgba.png")), FastAssetParams())
        >>> out.value.glb[:4]
        b'glTF'
    """

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu",
                 models: StageModels | None = None) -> None:
        self.preset = preset
        self.models = models if models is not None else StageModels(preset, device)

    def __call__(self, image: EncodedImage, params: FastAssetParams, remove_background: bool = True
                 ) -> Timed[FastAsset]:
        """The GLB of ``image`` and the seconds it took (no queueing here).

        Raises:
            InvalidInputError: the image has no object (empty mask). nerf.mesh.EmptyIsosurfaceError: no surface.
        """
        start = time.perf_counter()
        prepared = prepare_input(image.image, remove_background, self.models.background_remover, FAST_INPUT_SIZE)
        removal_s = time.perf_counter() - start
        asset = fast_asset_glb(self.models.feedforward(), prepared.rgba, params, self.preset.fast)
        asset.metadata["background_removal"] = prepared.background_removal
        asset.metadata["timings_s"]["background_removal"] = round(removal_s, 3)
        return Timed(asset, time.perf_counter() - start)
