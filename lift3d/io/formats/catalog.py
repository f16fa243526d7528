"""The output formats of a 3D result: their media types, file names and the conversion from the GLB.

Media types (IANA's registry, https://www.iana.org/assignments/media-types/): ``model/gltf-binary`` (glTF),
``model/vnd.usdz+zip`` (USDZ, registered by Apple), ``model/stl`` (STL, registered by ASTM), ``model/3mf``
(3MF Consortium) and ``application/zip`` (the OBJ + MTL + PNG bundle; ``model/obj`` names one OBJ file, not the
bundle). PLY has no registered type: ``application/x-ply`` is the unregistered name tools use for it (RFC 6838 §3.4:
``x-`` names are unregistered).

FBX is not offered: there is no well-kept open Python writer (Autodesk's FBX SDK is closed and its Python bindings
come with the SDK, not from PyPI); :data:`lift3d.params.OutputFormat` refuses it with a message that says so.

Examples:
    >>> FORMATS["usdz"].media_type, FORMATS["obj"].filename("abc")
    ('model/vnd.usdz+zip', 'abc_obj.zip')
    >>> source_artifact("usdz", ["model.glb", "model_textured.glb"])
    'model_textured.glb'
    >>> source_artifact("stl", ["model.glb", "model_textured.glb"])
    'model.glb'
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from lift3d.io.media_types import GLB, ZIP

__all__ = ["FORMATS", "OutputFormatSpec", "PLY", "STL", "THREE_MF", "USDZ", "convert_glb", "source_artifact"]

USDZ = "model/vnd.usdz+zip"
STL = "model/stl"
PLY = "application/x-ply"
THREE_MF = "model/3mf"


@dataclass(frozen=True)
class OutputFormatSpec:
    """One output format."""

    name: str
    """As in :data:`lift3d.params.OUTPUT_FORMATS`: ``usdz``."""
    media_type: str
    """Its ``Content-Type``."""
    suffix: str
    """The download's file name after the job id: ``.usdz``, ``_obj.zip``."""
    artifact: str
    """The name under the job where the converted file is kept, beside ``model.glb``: ``model.usdz``."""
    textured: bool
    """Converted from ``model_textured.glb`` when the job has one (the format carries a texture); else from
    ``model.glb`` (the untextured mesh, closed where marching cubes closed it; vertex colours)."""

    def filename(self, job_id: str) -> str:
        """The ``Content-Disposition`` file name of job ``job_id``'s result in this format."""
        return f"{job_id}{self.suffix}"


FORMATS: dict[str, OutputFormatSpec] = {spec.name: spec for spec in (
    OutputFormatSpec("glb", GLB, ".glb", "model.glb", False),
    OutputFormatSpec("usdz", USDZ, ".usdz", "model.usdz", True),
    OutputFormatSpec("obj", ZIP, "_obj.zip", "model_obj.zip", True),
    OutputFormatSpec("stl", STL, ".stl", "model.stl", False),
    OutputFormatSpec("ply", PLY, ".ply", "model.ply", False),
    OutputFormatSpec("3mf", THREE_MF, ".3mf", "model.3mf", False),
)}
"""Every output format by name, in :data:`lift3d.params.OUTPUT_FORMATS` order (tests/test_formats.py checks that
the two agree)."""


def source_artifact(output_format: str, names: Collection[str]) -> str | None:
    """The GLB among a job's artifact ``names`` that ``output_format`` is converted from: ``model_textured.glb`` for
    a textured format when present, else ``model.glb``; None when the job wrote no ``model.glb`` (views only)."""
    spec = FORMATS[output_format]
    if spec.textured and "model_textured.glb" in names and "model.glb" in names:
        return "model_textured.glb"
    return "model.glb" if "model.glb" in names else None


def convert_glb(data: bytes, output_format: str) -> bytes:
    """The GLB ``data`` in ``output_format`` (``glb``: ``data`` itself).

    Raises:
        KeyError: an unknown format (the parameters let none through).
        InvalidInputError: ``data`` is not a GLB with triangles.
    """
    if FORMATS[output_format].name == "glb":
        return data
    # trimesh (and usd-core, for USDZ) are imported on the first conversion: the HTTP front door imports this
    # module for the media types and starts without them
    from lift3d.io.formats import meshes, usdz

    writers = {"usdz": usdz.usdz_bytes, "obj": meshes.obj_zip_bytes, "stl": meshes.stl_bytes,
               "ply": meshes.ply_bytes, "3mf": meshes.threemf_bytes}
    return writers[output_format](meshes.load_glb_mesh(data))
