"""Output formats (lift3d/io/formats, docs/formats.md): a textured GLB made the way the pipeline makes it (xatlas UVs,
a baked texture) and a vertex-coloured one, converted to USDZ, OBJ (ZIP), STL, PLY and 3MF; each read back by the
tool that reads it (usd-core and its validators, trimesh) with the right counts, frame, units and colours."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import trimesh

from lift3d.errors import InvalidInputError
from lift3d.io.formats import FORMATS, PLY, STL, THREE_MF, USDZ, convert_glb, source_artifact
from lift3d.io.formats.usdz import validate_usdz
from lift3d.io.formats.meshes import MM_PER_M, load_glb_mesh
from lift3d.io.media_types import GLB, ZIP
from lift3d.params import OUTPUT_FORMATS, GenerationParams, parse_params
from nerf.export import glb_bytes
from nerf.texture import bake_texture, textured_glb_bytes, unwrap


def _coloured_sphere() -> trimesh.Trimesh:
    """An icosphere (162 vertices, 320 faces), z-up world, 0.5 m radius, coloured by height (red top, blue bottom)."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    t = (mesh.vertices[:, 2:3] + 0.5)  # 0 at the bottom, 1 at the top
    rgb = np.concatenate([t, np.zeros_like(t), 1 - t], axis=1)
    mesh.visual.vertex_colors = np.concatenate([np.round(rgb * 255), np.full_like(t, 255)], axis=1).astype(np.uint8)
    return mesh


@pytest.fixture(scope="module")
def textured_glb() -> bytes:
    """What ``model_textured.glb`` holds: xatlas UVs (vertices split along seams), a 64² baked texture, PBR."""
    sphere = _coloured_sphere()
    baked = bake_texture(unwrap(sphere, size=64), None, size=64)
    return textured_glb_bytes(baked.mesh, baked.image, baked.uv, z_up_to_y_up=True, recenter=True)


@pytest.fixture(scope="module")
def coloured_glb() -> bytes:
    """What ``model.glb`` holds: the mesh with vertex colours."""
    return glb_bytes(_coloured_sphere())


def test_every_accepted_format_has_a_writer_and_an_iana_or_customary_media_type():
    assert tuple(FORMATS) == OUTPUT_FORMATS
    assert {name: spec.media_type for name, spec in FORMATS.items()} == {
        "glb": GLB, "usdz": "model/vnd.usdz+zip", "obj": ZIP, "stl": "model/stl", "ply": "application/x-ply",
        "3mf": "model/3mf"}
    assert (USDZ, STL, PLY, THREE_MF) == ("model/vnd.usdz+zip", "model/stl", "application/x-ply", "model/3mf")
    assert [FORMATS[name].filename("j") for name in OUTPUT_FORMATS] == [
        "j.glb", "j.usdz", "j_obj.zip", "j.stl", "j.ply", "j.3mf"]
    assert len({spec.artifact for spec in FORMATS.values()}) == len(FORMATS)  # one cache key each
    assert GenerationParams().output_format == "glb"


def test_fbx_and_unknown_formats_are_refused_with_a_reason():
    with pytest.raises(InvalidInputError, match="no well-kept open Python FBX writer") as refused:
        parse_params({"output_format": "fbx"})
    assert refused.value.errors[0].startswith("output_format:")
    with pytest.raises(InvalidInputError, match="'glb', 'usdz', 'obj', 'stl', 'ply' or '3mf'"):
        parse_params({"output_format": "gltf"})
    assert parse_params({"output_format": "3mf"}).output_format == "3mf"


def test_the_source_glb_is_the_textured_one_only_for_formats_that_carry_a_texture():
    both = ["model.glb", "model_textured.glb", "views/000.png"]
    assert [source_artifact(name, both) for name in OUTPUT_FORMATS] == [
        "model.glb", "model_textured.glb", "model_textured.glb", "model.glb", "model.glb", "model.glb"]
    assert source_artifact("usdz", ["model.glb"]) == "model.glb"  # texture off, or method fast (model.glb textured)
    assert source_artifact("usdz", ["views.zip", "views/000.png"]) is None  # views only: no model


def test_the_glb_reads_back_as_one_mesh_and_garbage_is_refused(textured_glb):
    mesh = load_glb_mesh(textured_glb)
    assert len(mesh.faces) == 320 and len(mesh.vertices) > 162  # split along the UV seams
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2) and mesh.visual.material.baseColorTexture.size == (64, 64)
    assert np.allclose(mesh.bounds, [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]], atol=1e-6)
    with pytest.raises(InvalidInputError, match="not a readable GLB"):
        load_glb_mesh(b"glTF but not really")
    assert convert_glb(textured_glb, "glb") is textured_glb  # served as written


# ------------------------------------------------------------------------------------------------ USDZ
def _open_usdz(data: bytes, tmp_path):
    from pxr import Usd

    path = tmp_path / "model.usdz"
    path.write_bytes(data)
    return Usd.Stage.Open(str(path))


def test_usdz_of_the_textured_glb_passes_every_registered_validator(textured_glb, tmp_path):
    from pxr import UsdGeom, UsdShade, UsdValidation

    data = convert_glb(textured_glb, "usdz")
    assert len(UsdValidation.ValidationRegistry().GetOrLoadAllValidators()) >= 25  # usd-core 26.11 registers 30
    assert validate_usdz(data) == []  # no error, no warning
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names[0] == "model.usdc" and len(names) == 2 and names[1].endswith(".png")  # layer first, then the texture

    stage = _open_usdz(data, tmp_path)
    assert (UsdGeom.GetStageUpAxis(stage), UsdGeom.GetStageMetersPerUnit(stage)) == ("Y", 1.0)
    assert stage.GetDefaultPrim().GetPath() == "/model"
    geom = UsdGeom.Mesh(stage.GetPrimAtPath("/model/mesh"))
    mesh = load_glb_mesh(textured_glb)
    points = np.asarray(geom.GetPointsAttr().Get())
    assert points.shape == mesh.vertices.shape and np.allclose(points, mesh.vertices, atol=1e-6)  # y-up metres as is
    assert list(geom.GetFaceVertexCountsAttr().Get()) == [3] * 320
    assert np.array_equal(np.asarray(geom.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3), mesh.faces)
    assert geom.GetSubdivisionSchemeAttr().Get() == "none"
    st = UsdGeom.PrimvarsAPI(geom).GetPrimvar("st")
    assert np.allclose(np.asarray(st.Get()), mesh.visual.uv, atol=1e-6) and st.GetInterpolation() == "vertex"
    material, _ = UsdShade.MaterialBindingAPI(geom.GetPrim()).ComputeBoundMaterial()
    texture = UsdShade.Shader(stage.GetPrimAtPath(material.GetPath().AppendChild("DiffuseTexture")))
    assert texture.GetInput("file").Get().resolvedPath.endswith(f"model.usdz[{names[1]}]")  # packaged, resolvable
    assert texture.GetInput("sourceColorSpace").Get() == "sRGB"


def test_usdz_of_a_vertex_coloured_glb_is_valid_and_carries_display_colours(coloured_glb, tmp_path):
    from pxr import UsdGeom

    data = convert_glb(coloured_glb, "usdz")
    assert validate_usdz(data) == []
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["model.usdc"]
    stage = _open_usdz(data, tmp_path)  # held: a prim does not keep its stage alive
    colours = np.asarray(UsdGeom.Mesh(stage.GetPrimAtPath("/model/mesh")).GetDisplayColorAttr().Get())
    expected = load_glb_mesh(coloured_glb).visual.vertex_colors[:, :3] / 255.0
    assert colours.shape == (162, 3) and np.allclose(colours, expected, atol=1e-6)


def test_the_validator_check_can_fail(tmp_path):
    """A package without stage metadata: validate_usdz names the missing upAxis, metersPerUnit and defaultPrim."""
    from pxr import Sdf, Usd, UsdGeom, UsdUtils

    layer = tmp_path / "bare.usdc"
    stage = Usd.Stage.CreateNew(str(layer))
    UsdGeom.Xform.Define(stage, "/model")
    stage.GetRootLayer().Save()
    package = tmp_path / "bare.usdz"
    assert UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(package))
    errors = {issue.name for issue in validate_usdz(package.read_bytes()) if issue.severity == "error"}
    assert {"MissingUpAxisMetadata", "MissingMetersPerUnitMetadata", "MissingDefaultPrim"} <= errors


# ------------------------------------------------------------------------------------------------ trimesh formats
def test_obj_zip_holds_obj_mtl_and_png_and_loads_textured(textured_glb, tmp_path):
    data = convert_glb(textured_glb, "obj")
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(archive.namelist()) == ["albedo.png", "model.mtl", "model.obj"]
    mtl = archive.read("model.mtl").decode()
    assert "map_Kd albedo.png" in mtl and "Kd 1.00000000 1.00000000 1.00000000" in mtl
    archive.extractall(tmp_path)
    loaded = trimesh.load(tmp_path / "model.obj", process=False, force="mesh")
    source = load_glb_mesh(textured_glb)
    assert (len(loaded.vertices), len(loaded.faces)) == (len(source.vertices), 320)
    assert np.allclose(loaded.vertices, source.vertices, atol=1e-6)  # metres, y-up: the GLB's numbers
    assert np.allclose(loaded.visual.uv, source.visual.uv, atol=1e-6)
    assert loaded.visual.material.image.size == (64, 64)
    assert convert_glb(textured_glb, "obj") == data  # fixed ZIP timestamps: the same bytes each time


def test_obj_zip_of_a_vertex_coloured_glb_is_the_obj_alone_with_colours(coloured_glb, tmp_path):
    archive = zipfile.ZipFile(io.BytesIO(convert_glb(coloured_glb, "obj")))
    assert archive.namelist() == ["model.obj"]
    (tmp_path / "model.obj").write_bytes(archive.read("model.obj"))
    loaded = trimesh.load(tmp_path / "model.obj", process=False, force="mesh")
    assert (len(loaded.vertices), len(loaded.faces)) == (162, 320)
    assert np.array_equal(loaded.visual.vertex_colors, load_glb_mesh(coloured_glb).visual.vertex_colors)


@pytest.mark.parametrize("fmt, file_type, scale", [("stl", "stl", MM_PER_M), ("3mf", "3mf", MM_PER_M),
                                                   ("ply", "ply", 1.0)])
def test_geometry_formats_are_one_welded_surface_in_their_units(textured_glb, fmt, file_type, scale):
    loaded = trimesh.load(io.BytesIO(convert_glb(textured_glb, fmt)), file_type=file_type, force="mesh")
    # the seams are welded again: the 162 vertices of the sphere, every face, a closed surface
    assert (len(loaded.vertices), len(loaded.faces)) == (162, 320)
    assert loaded.is_watertight
    assert np.allclose(loaded.bounds, np.array([[-0.5] * 3, [0.5] * 3]) * scale, atol=1e-3 * scale)
    if fmt == "3mf":
        assert loaded.units in ("millimeters", "millimeter")


def test_ply_carries_the_texture_as_vertex_colours(textured_glb, coloured_glb):
    for glb in (textured_glb, coloured_glb):
        loaded = trimesh.load(io.BytesIO(convert_glb(glb, "ply")), file_type="ply", process=False)
        colours = np.asarray(loaded.visual.vertex_colors, dtype=float)
        top, bottom = colours[loaded.vertices[:, 1].argmax()], colours[loaded.vertices[:, 1].argmin()]
        # red on top (y-up after the GLB's turn), blue at the bottom; a texel's colour is within a few levels
        assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60, (top, bottom)


# ------------------------------------------------------------------------------------------------ lift3d generate
def test_generate_writes_the_asked_format_beside_its_glbs(textured_glb, coloured_glb, tmp_path):
    from lift3d.cli.generate import write_output_format

    (tmp_path / "model.glb").write_bytes(coloured_glb)
    (tmp_path / "model_textured.glb").write_bytes(textured_glb)
    path = write_output_format(tmp_path, "usdz")
    assert path == tmp_path / "model.usdz" and validate_usdz(path.read_bytes()) == []
    assert len(zipfile.ZipFile(path).namelist()) == 2  # from the textured GLB: layer + texture
    assert write_output_format(tmp_path, "stl") == tmp_path / "model.stl"
    assert write_output_format(tmp_path, "glb") is None  # already written
    views_only = tmp_path / "views"
    views_only.mkdir()
    assert write_output_format(views_only, "usdz") is None and not list(views_only.iterdir())


def test_generate_refuses_fbx_before_loading_anything(tmp_path, capsys):
    from lift3d.cli.main import main

    code = main(["generate", "--out", str(tmp_path / "out"), "--prompt", "a chair", "--output-format", "fbx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no well-kept open Python FBX writer" in err[0], err
    assert not (tmp_path / "out").exists()
