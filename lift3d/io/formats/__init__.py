"""3D output formats (docs/formats.md): the GLB a generation writes, converted to USDZ (AR Quick Look), OBJ (a ZIP
with its MTL and PNG texture), STL, PLY and 3MF.

- :mod:`lift3d.io.formats.catalog`: each format's media type and file names, and :func:`convert_glb`.
- :mod:`lift3d.io.formats.meshes`: reading the GLB as one trimesh mesh; OBJ, STL, PLY and 3MF through trimesh.
- :mod:`lift3d.io.formats.usdz`: USDZ through Pixar's usd-core, and
  :func:`~lift3d.io.formats.usdz.validate_usdz` (every registered ``UsdValidation`` validator).

The package itself imports neither trimesh nor usd-core (``pxr``): the HTTP front door imports it for the media types,
and the first conversion imports what it needs.

Examples:
    >>> usdz = convert_glb(open("model_textured.glb", "rb").read(), "usdz")  # doctest: +SKIP
    >>> FORMATS["usdz"].media_type
    'model/vnd.usdz+zip'
"""

from lift3d.io.formats.catalog import FORMATS, PLY, STL, THREE_MF, USDZ, OutputFormatSpec, convert_glb, source_artifact

__all__ = ["FORMATS", "OutputFormatSpec", "PLY", "STL", "THREE_MF", "USDZ", "convert_glb", "source_artifact"]
