"""Photo-inconsistency carving of the visual hull (nerf/photo_carve.py): an open box loses its lid, a box does not."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import trimesh

from nerf.datasets.blender import ViewDataset
from nerf.mesh_render import render_mesh, spread_cameras
from nerf.photo_carve import CarveConfig, carve_inconsistent
from nerf.scene_box import scene_frame
from nerf.trainers.photometric import ReconstructionConfig, ReconstructionTrainer

FOVY = 40.0


def _boxes(*extents_and_centres: tuple[tuple[float, float, float], tuple[float, float, float]]) -> trimesh.Trimesh:
    """A union of axis-aligned boxes with flat-shaded faces (each face its own vertices)."""
    parts = [trimesh.creation.box(extents=e, transform=trimesh.transformations.translation_matrix(c))
             for e, c in extents_and_centres]
    mesh = trimesh.util.concatenate(parts)
    mesh.unmerge_vertices()
    return mesh


def _open_box() -> trimesh.Trimesh:
    """1.0 × 0.8 × 0.6 (z up), walls and floor 0.05 thick, open at the top; centred at the origin."""
    w = 0.05
    return _boxes(((1.0, 0.8, w), (0, 0, -0.3 + w / 2)),
                  ((w, 0.8, 0.6), (-0.5 + w / 2, 0, 0)), ((w, 0.8, 0.6), (0.5 - w / 2, 0, 0)),
                  ((1.0, w, 0.6), (0, -0.4 + w / 2, 0)), ((1.0, w, 0.6), (0, 0.4 - w / 2, 0)))


def _views(mesh: trimesh.Trimesh, count: int = 24, size: int = 96) -> ViewDataset:
    c2w = spread_cameras(count, 3.0, FOVY, (-10.0, 60.0), "even").c2w.float()
    rgba = render_mesh(mesh, c2w, FOVY, size, size)
    return ViewDataset(rgb=rgba[..., :3].contiguous(), alpha=rgba[..., 3:].contiguous(),
                       has_alpha=torch.ones(count, dtype=torch.bool), c2w=c2w, fovy_deg=FOVY, image_paths=[])


def _carve(mesh: trimesh.Trimesh, config: CarveConfig | None = None):
    views = _views(mesh)
    frame = scene_frame(views, 1.1, 48)
    c2w = views.c2w.clone()
    c2w[:, :3, 3] = frame.to_normalised(c2w[:, :3, 3])
    carved, report = carve_inconsistent(frame.hull, views.rgb, views.alpha, c2w, views.fovy_deg, config)
    return frame, carved, report


def _index(frame, point: tuple[float, float, float], n: int = 48) -> tuple[int, int, int]:
    p = frame.to_normalised(torch.tensor([point], dtype=torch.float32))[0]
    return tuple(int(round(float(c))) for c in (p + 1.0) / (2.0 / (n - 1)))


def test_open_box_loses_the_inside_of_its_lid_and_keeps_floor_and_walls() -> None:
    frame, carved, report = _carve(_open_box())
    hull = frame.hull
    # The visual hull of an open box is the closed box: its cavity centre is inside the hull.
    centre = _index(frame, (0.0, 0.0, 0.0))
    assert bool(hull[centre]) and not bool(carved[centre])
    # What was carved lies inside the hull and the outer layer stays (lid, floor and walls start as a shell).
    assert not bool((carved & ~hull).any())
    boundary_points = [(0.0, 0.0, -0.3), (0.5, 0.0, 0.0), (-0.5, 0.0, 0.0), (0.0, 0.4, 0.0), (0.0, -0.4, 0.0),
                       (0.0, 0.0, 0.3)]
    for point in boundary_points:
        idx = _index(frame, point)
        near = carved[max(idx[0] - 1, 0):idx[0] + 2, max(idx[1] - 1, 0):idx[1] + 2, max(idx[2] - 1, 0):idx[2] + 2]
        assert bool(near.any()), point
    assert report.region > 0.1 * report.boundary  # the lid: one wide patch
    assert report.carved > 0.5 * int(hull.sum())
    # Recorded (deterministic: the renders, the hull and the carve draw no random numbers).
    assert (report.boundary, report.inconsistent, report.region, report.candidates, report.carved) == (
        4978, 1218, 1102, 22808, 22808)
    assert (int(hull.sum()), int(carved.sum())) == (28443, 5635)


def test_too_small_a_carving_is_dropped() -> None:
    frame, carved, report = _carve(_open_box(), CarveConfig(min_carved_share=0.9))  # 22808 of 28443 is 80 %
    assert report.candidates == 22808 and report.carved == 0
    assert torch.equal(carved, frame.hull.cpu())


def test_closed_box_is_not_carved() -> None:
    frame, carved, report = _carve(_boxes(((1.0, 0.8, 0.6), (0, 0, 0))))
    assert report.region == 0 and report.carved == 0
    assert report.inconsistent == 317  # recorded: the edges' mixed shades, no patch wide enough
    assert torch.equal(carved, frame.hull.cpu())


def test_carve_config_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        CarveConfig(shell=0.0)
    with pytest.raises(ValueError):
        CarveConfig(region_share=1.5)


def test_trainer_carves_the_open_box_and_switches_to_the_carved_recipe() -> None:
    carve = CarveConfig(fit_steps=3, lambda_volume=0.05)
    config = ReconstructionConfig(max_steps=1, hull_init_steps=2, hull_resolution=48, carve=carve)
    trainer = ReconstructionTrainer(_views(_open_box()), config)
    history = trainer.train()
    report = trainer.carve_report
    assert report is not None and report.carved > 0.5 * int(trainer.frame.hull.sum())
    assert "volume" in history[0].losses  # the carved recipe's volume pressure is on
    assert trainer._hollow_start  # the unseen inside is filled before marching cubes
    closed = ReconstructionTrainer(_views(_boxes(((1.0, 0.8, 0.6), (0, 0, 0)))), config)
    history = closed.train()
    assert closed.carve_report is not None and closed.carve_report.carved == 0
    assert "volume" not in history[0].losses and not closed._hollow_start
    off = ReconstructionTrainer(_views(_open_box()), replace(config, carve=None))
    off.train()
    assert off.carve_report is None
