"""Hyper-parameters of multi-view reconstruction (:class:`ReconstructionConfig`), apart from the trainer that uses
them (:mod:`nerf.trainers.photometric`, whose module doc gives the recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as default

from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig
from nerf.mesh import IsosurfaceConfig
from nerf.occupancy_grid import OccupancyGridConfig
from nerf.photo_carve import CarveConfig
from nerf.sdf import SurfaceConfig

__all__ = ["ReconstructionConfig"]


def _default_field() -> FieldConfig:
    # 12 levels from 16 to 512 cells: finer than the 128² views need, small enough for 2 CPU cores.
    grid = HashGridConfig(n_levels=12, n_features_per_level=2, log2_hashmap_size=17, base_resolution=16,
                          per_level_scale=math.exp(math.log(512 / 16) / 11))
    return FieldConfig(radius=1.0, hash_grid=grid, n_neurons=64, n_hidden_layers=1, density_bias="none")


@dataclass
class ReconstructionConfig:
    """Hyper-parameters of :class:`ReconstructionTrainer` (tuned for 32 views at 128² on 2 CPU cores)."""

    max_steps: int = 800
    """Photometric optimisation steps (>= 1); 800 of 1 024 rays (issue 22, ``benchmarks/README.md``)."""
    max_seconds: float | None = None
    """Stop earlier once training took this long (wall clock); None: run ``max_steps``."""
    batch_rays: int = 1024
    """Rays per step (>= 1). 800 × 1 024 rays beat 400 × 4 096 on boxes in half the time (issue 22 tables)."""
    lr: float = 1e-2
    """Initial Adam learning rate (Instant-NGP: 1e-2)."""
    lr_final_ratio: float = 0.1
    """Learning rate at the last step relative to ``lr`` (exponential decay), in (0, 1]."""
    lambda_mask: float = 0.1
    """Weight of MSE(opacity, alpha) on pixels with alpha (>= 0)."""
    field: FieldConfig = default(default_factory=_default_field)
    """The implicit volume. Its box is the normalised frame's ``[-1, 1]^3`` (``radius`` must be 1); no density
    bias by default, since the visual hull replaces the blob prior."""
    num_samples_per_ray: int = 256
    """Sets the march step, ``1.732 * 2 / num_samples_per_ray`` in the normalised frame."""
    grid: OccupancyGridConfig = default(default_factory=lambda: OccupancyGridConfig(resolution=32))
    """Occupancy grid of the renderer (box ``[-1, 1]^3``)."""
    early_stop_eps: float = 1e-3
    """Transmittance below which samples are skipped (see :class:`nerf.renderer.RendererConfig`)."""
    box_margin: float = 1.1
    """Box half-size / half-size of the object estimate (visual hull or camera sphere), >= 1."""
    hull_resolution: int = 64
    """Grid points per axis of the visual-hull estimate (>= 8); 64 (not 96) lifts the cube's F@1 % by 0.07."""
    hull_alpha_threshold: float = 0.01
    """A pixel is foreground for carving when its alpha exceeds this: any partial coverage counts, so the hull
    (looked up at the pixel containing a point's projection) stays a superset of the object, in [0, 1)."""
    hull_dilation_px: float = 0.0
    """Masks are also dilated by this many pixels before carving (for noisy real masks), >= 0."""
    hull_init_steps: int = 60
    """Hull-fit steps before photometric training (0 disables; needs masks); 60, not 100: less saturated, carvable."""
    hull_init_points: int = 16384
    """Random points per hull-fitting step (>= 1)."""
    hull_init_occupancy: float = 1.0
    """Target occupancy of one hull cell inside the hull, in (0, 1]: 1 fits a saturated solid; lower values a
    softer density that photometric training carves more easily (cavities that the silhouettes cannot show)."""
    hull_init_shell: float = 0.0
    """Only hull cells within this distance of the hull's boundary (normalised units) are fitted as occupied,
    deeper ones as empty (:func:`nerf.trainers.hull_init.hull_targets`; 0: the solid hull, the default), >= 0;
    the empty inside is filled before marching cubes where no view sees it (:func:`nerf.unseen_interior
    .fill_unseen`). Issue 22 (``benchmarks/README.md``): 0.1 carves the cube's faces (F@1 % 0.836 → 0.900) and
    is no worse on 32 views at 128², but breaks a sphere from 16 views at 64² (hollow, breached shell); off."""
    carve: CarveConfig | None = default(default_factory=CarveConfig)
    """Empty the hull behind wide photo-inconsistent patches before the hull fit (:mod:`nerf.photo_carve`; needs
    masks on every view); when it carves, its ``fit_steps`` and ``lambda_volume`` apply. None: off. Issue 22: the
    open box's lid; no other test shape has such a patch (``benchmarks/README.md``)."""
    lambda_flat: float = 0.0
    """Weight of the flat-face prior (:func:`nerf.losses.disparity_curvature_loss`) on pixel triplets inside the
    masks (>= 0; 0 disables; needs RGBA views)."""
    flat_fraction: float = 0.25
    """Share of ``batch_rays`` spent on the prior's triplets (the rest are drawn uniformly), in [0, 1)."""
    flat_stride: int = 2
    """Spacing in pixels of a triplet's three pixels along its row or column (>= 1)."""
    lambda_distortion: float = 0.0
    """Weight of the distortion loss (:func:`nerf.losses.distortion_loss`, mip-NeRF 360) that sharpens each ray's
    density ramp into a step (>= 0; 0 disables; issue 22: it pins flat faces to the hull, so it stays off)."""
    lambda_volume: float = 0.0
    """Weight of the volume penalty: the mean occupancy ``1 - exp(-density * step)`` (``step`` the march step) at
    ``volume_points`` uniform points of the box, an inward pressure that the colour and mask losses resist wherever
    the views pin the surface (>= 0; 0 disables)."""
    volume_points: int = 4096
    """Uniform points per step of the volume penalty (>= 1)."""
    surface: SurfaceConfig | None = None
    """None: a density field; a :class:`~nerf.sdf.SurfaceConfig`: a signed-distance field rendered with VolSDF
    density and/or NeuS opacity, fitted to the hull's signed distance, regularised by eikonal, curvature and
    pressure terms, meshed at its zero level (the isosurface threshold is then ignored). Off: issue 22's tables."""
    isosurface: IsosurfaceConfig = default(default_factory=lambda: IsosurfaceConfig(resolution=128, threshold=20.0))
    """Mesh extraction in the normalised frame (threshold in 1 / normalised units): 128³ matched 192³ within 0.03 %
    Chamfer at a quarter of the cost. 20 for the current recipe's fields: 30–60 hollows the solid boxes (issue 22,
    benchmarks/README.md)."""
    silhouette_thresholds: tuple[float, ...] = ()
    """Candidate isosurface thresholds (1 / normalised units); with masks, :meth:`ReconstructionTrainer.extract_mesh`
    uses the one whose mesh silhouettes best match them (:meth:`ReconstructionTrainer.silhouette_threshold`)."""
    silhouette_resolution: int = 96
    """Marching-cubes grid points per axis of the candidate meshes of the silhouette fit (>= 8)."""
    unmasked_threshold_fraction: float = 0.4
    """Without masks, the isosurface threshold as a fraction of the 99th-percentile density (see
    :meth:`ReconstructionTrainer.extract_mesh`), in (0, 1]."""
    seed: int = 0
    """Seeds the field initialisation, the ray batches and the jitter."""

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_rays < 1 or self.field.n_hidden_layers < 1 or self.hull_resolution < 8:
            raise ValueError(f"ReconstructionConfig: max_steps, batch_rays, field.n_hidden_layers must be >= 1 and "
                             f"hull_resolution >= 8: {self}")
        if self.field.radius != 1.0:
            raise ValueError(f"ReconstructionConfig: field.radius must be 1 (the normalised frame), got "
                             f"{self.field.radius}")
        if not 0.0 < self.lr_final_ratio <= 1.0 or self.box_margin < 1.0 or self.lambda_mask < 0:
            raise ValueError(f"ReconstructionConfig: need 0 < lr_final_ratio <= 1, box_margin >= 1, "
                             f"lambda_mask >= 0: {self}")
        needs = {"lambda_flat >= 0, 0 <= flat_fraction < 1, flat_stride >= 1":
                 self.lambda_flat >= 0 and 0.0 <= self.flat_fraction < 1.0 and self.flat_stride >= 1,
                 "silhouette_resolution >= 8, silhouette_thresholds > 0":
                 self.silhouette_resolution >= 8 and all(t > 0 for t in self.silhouette_thresholds),
                 "lambda_volume, lambda_distortion >= 0, volume_points >= 1, 0 < hull_init_occupancy <= 1":
                 min(self.lambda_volume, self.lambda_distortion) >= 0 and self.volume_points >= 1
                 and 0.0 < self.hull_init_occupancy <= 1.0,
                 "hull_init_steps >= 0, hull_init_points >= 1, 0 <= hull_alpha_threshold < 1, hull_init_shell >= 0":
                 self.hull_init_steps >= 0 and self.hull_init_points >= 1 and 0.0 <= self.hull_alpha_threshold < 1.0
                 and self.hull_init_shell >= 0}
        if not all(needs.values()):
            raise ValueError(f"ReconstructionConfig: need {'; '.join(k for k, ok in needs.items() if not ok)}: {self}")
