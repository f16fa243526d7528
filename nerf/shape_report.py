"""Where a reconstructed surface departs from the true one: one :class:`ShapeReport` per (prediction, reference).

Built on :mod:`nerf.metrics` (same normalisation, sampling and exact sample-to-surface distances; all lengths are
fractions of the reference's bounding-box diagonal, 0.01 = "1 %"). Beside Chamfer-L1 and the F-score it reports:

- **precision and recall** at the threshold, the F-score's two halves (Tatarchenko et al. 2019);
- the **signed offset** of predicted samples along the true normal: the distance to the reference surface, positive
  where the sample lies on the outer side of the closest reference face (its outward normal; the face whose normal
  is most decisive among equally close ones, so samples off an edge or a corner are signed right), as 10/50/90th
  percentiles: a surface grown outward has a positive median, dents a negative 10th percentile;
- the **volume ratio** pred / ref when both meshes, vertices merged by position, are watertight (else None and the
  reason);
- **recall near sharp edges vs on flat faces**: reference samples within ``edge_band`` of a sharp edge of the
  reference (dihedral angle above ``sharp_angle_deg``, or an open boundary edge; Botsch et al., *Polygon Mesh
  Processing*, §3.3 "feature edges") against those farther away;
- **floaters**: the share of the prediction's area outside its largest connected component (faces joined by shared
  edges), and the same share of the reference for comparison (a reference may have several parts).

Examples:
    >>> cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    >>> big = trimesh.creation.box(extents=(1.02, 1.02, 1.02))
    >>> r = shape_report(big, cube, n_samples=20_000)
    >>> round(r.offset_p50 * 100, 3), round(r.volume_ratio, 4)  # 1 % of the half side = 0.577 % of the diagonal
    (0.577, 1.0612)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from nerf.metrics import MeshDistances, Normalize, _normalised_vertices, _sample_surface, _surface_candidates

__all__ = ["ShapeReport", "floater_area_fraction", "format_reports", "segment_distance", "shape_report",
           "sharp_edges"]


@dataclass
class ShapeReport:
    """Surface metrics of a prediction against a reference; lengths are fractions of the reference's diagonal.

    Attributes:
        chamfer_l1: Chamfer-L1 (>= 0).
        f_score: F-score at ``threshold``, in [0, 1].
        precision: fraction of predicted samples within ``threshold`` of the reference.
        recall: fraction of reference samples within ``threshold`` of the prediction.
        threshold: the F-score's distance threshold (0.01 = 1 %).
        offset_p10, offset_p50, offset_p90: percentiles of the predicted samples' signed offset along the true
            normal (positive = outside the reference).
        volume_ratio: pred volume / ref volume, or None (see ``volume_note``).
        volume_note: why ``volume_ratio`` is None; "" otherwise.
        recall_edges: recall over reference samples within ``edge_band`` of a sharp edge; None when there are none.
        recall_flat: recall over the other reference samples; None when there are none.
        edge_area_fraction: share of the reference's area within ``edge_band`` of a sharp edge, in [0, 1].
        floater_area_fraction: share of the prediction's area outside its largest connected component, in [0, 1].
        ref_floater_area_fraction: the same share for the reference.
        edge_band: distance to a sharp edge below which a reference sample counts as "near an edge".
        sharp_angle_deg: dihedral angle above which a reference edge is sharp.
        n_samples: surface samples per mesh.
    """

    chamfer_l1: float
    f_score: float
    precision: float
    recall: float
    threshold: float
    offset_p10: float
    offset_p50: float
    offset_p90: float
    volume_ratio: float | None
    volume_note: str
    recall_edges: float | None
    recall_flat: float | None
    edge_area_fraction: float
    floater_area_fraction: float
    ref_floater_area_fraction: float
    edge_band: float
    sharp_angle_deg: float
    n_samples: int

    def as_dict(self) -> dict:
        """JSON-able dict of every field."""
        return asdict(self)


def shape_report(pred: trimesh.Trimesh, ref: trimesh.Trimesh, *, threshold: float = 0.01, n_samples: int = 100_000,
                 normalize: Normalize = "reference", seed: int = 0, edge_band: float = 0.02,
                 sharp_angle_deg: float = 30.0, n_candidates: int = 8) -> ShapeReport:
    """Measure ``pred`` against ``ref``: see the module docstring and :class:`ShapeReport`.

    Both meshes are used with their vertices merged by position (OBJ files split vertices per normal or colour).
    The samples are those of :func:`nerf.metrics.mesh_distances` with the same ``seed`` (same Chamfer and F-score).

    Args:
        pred: predicted mesh, in ``ref``'s frame unless ``normalize="each"``.
        ref: reference mesh, faces wound outward (a negative volume flips the offsets' sign).
        threshold: F-score, precision and recall threshold (fraction of the diagonal, > 0).
        n_samples: surface samples per mesh (>= 1).
        normalize: as in :func:`nerf.metrics.mesh_distances`.
        seed: sampling seed.
        edge_band: "near a sharp edge" distance (fraction of the diagonal, > 0).
        sharp_angle_deg: dihedral angle in degrees (0–180) above which an edge is sharp.
        n_candidates: nearest samples whose triangles are tested exactly (>= 1).

    Returns:
        :class:`ShapeReport`.

    Raises:
        ValueError: an argument out of range, or a mesh with no faces, zero area or a degenerate bounding box.
    """
    # 1. check inputs
    if not (threshold > 0 and edge_band > 0 and 0 <= sharp_angle_deg < 180 and n_samples >= 1 and n_candidates >= 1):
        raise ValueError(f"shape_report: need threshold > 0, edge_band > 0, 0 <= sharp_angle_deg < 180, n_samples "
                         f">= 1, n_candidates >= 1; got {threshold}, {edge_band}, {sharp_angle_deg}, {n_samples}, "
                         f"{n_candidates}")
    pred, ref = _merged(pred, "pred"), _merged(ref, "ref")

    # 2. samples and distances both ways (as mesh_distances), the forward one signed
    pred_v, ref_v = _normalised_vertices(pred, ref, normalize)
    rng = np.random.default_rng(seed)
    pred_pts, pred_fid = _sample_surface(pred_v[pred.faces], n_samples, rng)
    ref_pts, ref_fid = _sample_surface(ref_v[ref.faces], n_samples, rng)
    signed = _signed_distance(pred_pts, ref_pts, ref_fid, ref_v, ref, n_candidates)
    faces, closest, sample_dist = _surface_candidates(ref_pts, pred_pts, pred_fid, pred_v, pred, n_candidates)
    back = np.minimum(np.linalg.norm(ref_pts[:, None] - closest, axis=-1).min(axis=1), sample_dist)
    distances = MeshDistances(pred_to_ref=np.abs(signed), ref_to_pred=back)

    # 3. recall near sharp edges and on flat faces
    segments = sharp_edges(ref, sharp_angle_deg, vertices=ref_v)
    near = segment_distance(ref_pts, segments, spacing=edge_band / 4) <= edge_band
    hit = back < threshold
    ratio, note = _volume_ratio(pred, ref)
    p10, p50, p90 = np.percentile(signed, [10, 50, 90])
    return ShapeReport(
        chamfer_l1=distances.chamfer_l1, f_score=distances.f_score(threshold),
        precision=distances.precision(threshold), recall=distances.recall(threshold), threshold=threshold,
        offset_p10=float(p10), offset_p50=float(p50), offset_p90=float(p90), volume_ratio=ratio, volume_note=note,
        recall_edges=float(hit[near].mean()) if near.any() else None,
        recall_flat=float(hit[~near].mean()) if (~near).any() else None,
        edge_area_fraction=float(near.mean()), floater_area_fraction=floater_area_fraction(pred),
        ref_floater_area_fraction=floater_area_fraction(ref), edge_band=edge_band, sharp_angle_deg=sharp_angle_deg,
        n_samples=n_samples)


def sharp_edges(mesh: trimesh.Trimesh, angle_deg: float = 30.0, vertices: np.ndarray | None = None) -> np.ndarray:
    """Segments (E, 2, 3) of the edges whose dihedral angle exceeds ``angle_deg`` and of the open boundary edges.

    ``mesh`` should have its vertices merged by position (else every split edge looks open); ``vertices``
    (default: the mesh's own) gives the coordinates of the segments, e.g. normalised ones.
    """
    vertices = np.asarray(mesh.vertices if vertices is None else vertices, dtype=np.float64)
    sharp = np.asarray(mesh.face_adjacency_edges)[np.asarray(mesh.face_adjacency_angles) > math.radians(angle_deg)]
    edges = np.asarray(mesh.edges_sorted)
    open_edges = edges[trimesh.grouping.group_rows(edges, require_count=1)]
    return vertices[np.concatenate([sharp.reshape(-1, 2), open_edges.reshape(-1, 2)])]


def segment_distance(points: np.ndarray, segments: np.ndarray, spacing: float, k: int = 8) -> np.ndarray:
    """Distance (P,) from points (P, 3) to the nearest of the segments (E, 2, 3); ``inf`` when E = 0.

    Each segment is sampled every ``spacing`` (> 0); the segments of a point's ``k`` nearest segment samples are
    measured exactly. A closer segment among the others can be missed only by less than ``spacing / 2``.
    """
    if len(segments) == 0:
        return np.full(len(points), np.inf)
    a, ab = segments[:, 0], segments[:, 1] - segments[:, 0]
    counts = np.ceil(np.linalg.norm(ab, axis=1) / spacing).astype(int) + 1
    seg = np.repeat(np.arange(len(segments)), counts)
    t = np.concatenate([np.linspace(0.0, 1.0, n) for n in counts])
    k = min(k, len(seg))
    sample_dist, nearest = cKDTree(a[seg] + t[:, None] * ab[seg]).query(points, k=k, workers=-1)
    cand = seg[np.asarray(nearest).reshape(len(points), k)]  # (P, k)
    ap = points[:, None] - a[cand]
    length2 = np.maximum(np.einsum("pkc,pkc->pk", ab[cand], ab[cand]), 1e-300)
    s = np.clip(np.einsum("pkc,pkc->pk", ap, ab[cand]) / length2, 0.0, 1.0)
    d = np.linalg.norm(ap - s[..., None] * ab[cand], axis=-1).min(axis=1)
    return np.minimum(d, np.asarray(sample_dist).reshape(len(points), k)[:, 0])


def floater_area_fraction(mesh: trimesh.Trimesh) -> float:
    """Share in [0, 1] of ``mesh``'s area outside its largest (by area) edge-connected component."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    area = np.bincount(labels, weights=mesh.area_faces)
    return float(1.0 - area.max() / area.sum()) if area.sum() > 0 else 0.0


def format_reports(rows: list[tuple[str, ShapeReport]]) -> str:
    """A fixed-width table of reports, one row per (name, report); lengths in % of the reference's diagonal."""
    def num(value: float | None, scale: float = 1.0, width: int = 6, digits: int = 3) -> str:
        return f"{'–':>{width}}" if value is None else f"{scale * value:{width}.{digits}f}"

    head = (f"{'shape':14} {'Chamf%':>6} {'F@1%':>6} {'prec':>6} {'recall':>6} {'off10%':>6} {'off50%':>6} "
            f"{'off90%':>6} {'vol×':>6} {'R edge':>6} {'R flat':>6} {'edge%':>6} {'float%':>6}")
    lines = [head]
    for name, r in rows:
        lines.append(
            f"{name:14} {num(r.chamfer_l1, 100)} {num(r.f_score)} {num(r.precision)} {num(r.recall)} "
            f"{num(r.offset_p10, 100, digits=2)} {num(r.offset_p50, 100, digits=2)} {num(r.offset_p90, 100, digits=2)} "
            f"{num(r.volume_ratio)} {num(r.recall_edges)} {num(r.recall_flat)} "
            f"{num(r.edge_area_fraction, 100, digits=1)} "
            f"{num(r.floater_area_fraction, 100, digits=2)}")
    return "\n".join(lines)


def _merged(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """A copy with vertices merged by position and no visuals; checks for faces and area."""
    if len(mesh.faces) == 0 or not mesh.area > 0:
        raise ValueError(f"shape_report: the {name} mesh has no faces or zero area")
    return trimesh.Trimesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces), process=True)


def _signed_distance(points: np.ndarray, samples: np.ndarray, sample_fid: np.ndarray, vertices: np.ndarray,
                     mesh: trimesh.Trimesh, k: int) -> np.ndarray:
    """Distance (P,) from points to ``mesh``'s surface, negative on the inner side of the closest face.

    Among the candidate faces at the minimum distance (ties at edges and corners), the one whose normal has the
    largest |(p − closest) · n| gives the sign: outside a convex edge both are >= 0, inside a concave one both <= 0.
    """
    faces, closest, _ = _surface_candidates(points, samples, sample_fid, vertices, mesh, k)
    offset = points[:, None] - closest  # (P, C, 3)
    d = np.linalg.norm(offset, axis=-1)
    best = d.min(axis=1)
    tri = vertices[np.asarray(mesh.faces)]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    if mesh.is_watertight and mesh.volume < 0:  # wound inward
        normals = -normals
    dots = np.where(d <= best[:, None] * (1.0 + 1e-9) + 1e-15, np.einsum("pcx,pcx->pc", offset, normals[faces]), 0.0)
    pick = np.abs(dots).argmax(axis=1)
    return np.sign(dots[np.arange(len(points)), pick]) * best


def _volume_ratio(pred: trimesh.Trimesh, ref: trimesh.Trimesh) -> tuple[float | None, str]:
    """pred / ref volume of merged meshes, or (None, why) when one is not watertight or wound inconsistently."""
    for name, mesh in (("pred", pred), ("ref", ref)):
        if not mesh.is_watertight:
            edges = np.asarray(mesh.edges_sorted)
            n_open = len(trimesh.grouping.group_rows(edges, require_count=1))
            return None, f"{name} is not watertight ({n_open} open edges)" if n_open else \
                f"{name} is not watertight (edges shared by more than two faces)"
        if not mesh.is_winding_consistent:
            return None, f"{name} has inconsistent face winding"
    if ref.volume == 0:
        return None, "ref has zero volume"
    return float(pred.volume / ref.volume), ""
