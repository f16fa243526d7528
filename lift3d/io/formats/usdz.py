"""USDZ for AR Quick Look, written with Pixar's ``usd-core`` (``pxr``), and a check with every validator it registers.

The stage (AR Quick Look's requirements, Apple's "Creating USD files for Apple devices", and the USD stage metadata
rules): ``upAxis`` Y and ``metersPerUnit`` 1 (a GLB is y-up in metres, so points are copied as they are), a default
prim ``/model`` of kind ``component``, one ``Mesh`` (triangles, ``subdivisionScheme`` none, vertex normals, ``st``
UVs) bound to a ``UsdPreviewSurface`` material whose ``diffuseColor`` reads the baked texture through ``UsdUVTexture``
(sRGB) and a ``UsdPrimvarReader_float2`` of ``st``; roughness and metallic from the GLB's PBR material. A mesh without
texture gets its vertex colours as ``primvars:displayColor``, read by a ``UsdPrimvarReader_float3``. The layer is
packaged with ``UsdUtils.CreateNewARKitUsdzPackage`` (a USDZ whose first file is the ``.usdc`` layer, texture beside
it, every file 64-byte aligned and stored uncompressed, as the USDZ specification asks).

:func:`validate_usdz` runs every validator in usd-core's ``UsdValidation`` registry (the framework that replaced the
old ``UsdUtils.ComplianceChecker``/``usdchecker --arkit`` rules: stage metadata, USDZ packaging, shader and material
binding rules, …) on the packaged file.

Examples:
    >>> data = usdz_bytes(load_glb_mesh(glb))  # doctest: +SKIP
    >>> [issue for issue in validate_usdz(data) if issue.severity == "error"]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import trimesh

from lift3d.io.formats.meshes import texture_of

__all__ = ["UsdzIssue", "usdz_bytes", "validate_usdz"]

_TEXTURE = "textures/albedo.png"
"""The texture's path inside the package, relative to the layer."""


class UsdzIssue(NamedTuple):
    """One finding of a usd-core validator: ``severity`` ``error``, ``warning`` or ``info``; ``validator`` its name
    (``usdGeomValidators:StageMetadataChecker``); ``name`` the error's name (``MissingUpAxisMetadata``)."""

    severity: str
    validator: str
    name: str
    message: str


def _pbr_factor(mesh: trimesh.Trimesh, attribute: str, default: float) -> float:
    value = getattr(getattr(mesh.visual, "material", None), attribute, None)
    return default if value is None else float(value)


def _define_mesh(stage, path: str, mesh: trimesh.Trimesh, textured: bool):  # noqa: ANN001, ANN202 (pxr types)
    """A triangle ``UsdGeom.Mesh`` at ``path`` with points, normals, extent and ``st`` (``textured``) or
    ``displayColor`` (vertex colours, when the mesh has them)."""
    from pxr import Sdf, UsdGeom, Vt

    points = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    geom = UsdGeom.Mesh.Define(stage, path)
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(mesh.faces), 3, dtype=np.int32)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.ascontiguousarray(mesh.faces, dtype=np.int32).ravel()))
    geom.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(mesh.vertex_normals, dtype=np.float32)))
    geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)  # the default, catmullClark, would smooth the triangles
    geom.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([points.min(axis=0), points.max(axis=0)])))
    primvars = UsdGeom.PrimvarsAPI(geom)
    if textured:
        uv = np.ascontiguousarray(mesh.visual.uv, dtype=np.float32)
        primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex).Set(
            Vt.Vec2fArray.FromNumpy(uv))
    elif isinstance(mesh.visual, trimesh.visual.ColorVisuals) and mesh.visual.kind == "vertex":
        rgb = np.ascontiguousarray(np.asarray(mesh.visual.vertex_colors)[:, :3], dtype=np.float32) / 255.0
        geom.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(Vt.Vec3fArray.FromNumpy(rgb))
    return geom


def _define_material(stage, path: str, mesh: trimesh.Trimesh, textured: bool):  # noqa: ANN001, ANN202
    """A ``UsdPreviewSurface`` material at ``path``: diffuse from the texture (``textured``) or from the
    ``displayColor`` primvar; roughness and metallic from the GLB's PBR factors (1 and 0 when absent)."""
    from pxr import Sdf, UsdShade

    material = UsdShade.Material.Define(stage, path)
    surface = UsdShade.Shader.Define(stage, f"{path}/PreviewSurface")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(_pbr_factor(mesh, "roughnessFactor", 1.0))
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(_pbr_factor(mesh, "metallicFactor", 0.0))
    reader = UsdShade.Shader.Define(stage, f"{path}/PrimvarReader")
    diffuse = surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    if textured:
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        st = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
        texture = UsdShade.Shader.Define(stage, f"{path}/DiffuseTexture")
        texture.CreateIdAttr("UsdUVTexture")
        texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(_TEXTURE))
        texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
        for wrap in ("wrapS", "wrapT"):
            texture.CreateInput(wrap, Sdf.ValueTypeNames.Token).Set("repeat")  # glTF's default sampler
        texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st)
        diffuse.ConnectToSource(texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
    else:
        reader.CreateIdAttr("UsdPrimvarReader_float3")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("displayColor")
        reader.CreateInput("fallback", Sdf.ValueTypeNames.Float3).Set((0.8, 0.8, 0.8))
        diffuse.ConnectToSource(reader.CreateOutput("result", Sdf.ValueTypeNames.Float3))
    material.CreateSurfaceOutput().ConnectToSource(surface.CreateOutput("surface", Sdf.ValueTypeNames.Token))
    return material


def _write_layer(mesh: trimesh.Trimesh, folder: Path) -> Path:
    """Write ``model.usdc`` (and the texture under ``textures/``) into ``folder``; returns the layer's path."""
    from pxr import Kind, Usd, UsdGeom, UsdShade

    texture = texture_of(mesh)
    if texture is not None:
        (folder / _TEXTURE).parent.mkdir(parents=True, exist_ok=True)
        texture.save(folder / _TEXTURE, format="PNG")
    layer = folder / "model.usdc"
    stage = Usd.Stage.CreateNew(str(layer))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, UsdGeom.LinearUnits.meters)
    root = UsdGeom.Xform.Define(stage, "/model")
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind(Kind.Tokens.component)
    geom = _define_mesh(stage, "/model/mesh", mesh, texture is not None)
    material = _define_material(stage, "/model/Materials/albedo", mesh, texture is not None)
    UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
    stage.GetRootLayer().Save()
    return layer


def usdz_bytes(mesh: trimesh.Trimesh) -> bytes:
    """A USDZ package of ``mesh`` (y-up, metres, as :func:`~lift3d.io.formats.meshes.load_glb_mesh` gives it) for
    AR Quick Look: see the module's description.

    Raises:
        RuntimeError: usd-core could not write the package (its own diagnostics are on stderr).
    """
    from pxr import Sdf, UsdUtils

    with tempfile.TemporaryDirectory(prefix="lift3d-usdz-") as tmp:
        layer = _write_layer(mesh, Path(tmp))
        package = Path(tmp) / "model.usdz"
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(package)) or not package.is_file():
            raise RuntimeError("usd-core could not package the USDZ")
        return package.read_bytes()


def validate_usdz(data: bytes) -> list[UsdzIssue]:
    """Every finding of every validator registered with usd-core's ``UsdValidation`` registry
    (``ValidationRegistry().GetOrLoadAllValidators()``, run by one ``ValidationContext``) on the USDZ ``data``:
    none for a clean package. The package is opened from a temporary file (USD opens layers by path)."""
    from pxr import Usd, UsdValidation

    severities = {UsdValidation.ValidationErrorType.Error: "error", UsdValidation.ValidationErrorType.Warn: "warning",
                  UsdValidation.ValidationErrorType.Info: "info"}
    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    with tempfile.TemporaryDirectory(prefix="lift3d-usdz-check-") as tmp:
        path = Path(tmp) / "model.usdz"
        path.write_bytes(data)
        stage = Usd.Stage.Open(str(path))
        if stage is None:
            return [UsdzIssue("error", "Usd.Stage.Open", "Unreadable", "usd-core cannot open the package")]
        errors = UsdValidation.ValidationContext(validators).Validate(stage)
        return [UsdzIssue(severities.get(error.GetType(), "error"),
                          error.GetValidator().GetMetadata().name if error.GetValidator() else "",
                          error.GetName(), error.GetMessage())
                for error in errors if not error.HasNoError()]
