"""Copy the JavaScript the playground loads from ``node_modules`` into the package's static folder: three.js (the
viewer), eventsource-parser (the page's server-sent-events reader), and the API documentation pages' Swagger UI
(``swagger-ui-dist``, at ``/docs``) and ReDoc (its standalone bundle, at ``/redoc``), served by lift3d instead of a
CDN (:mod:`lift3d.service.api.routes.playground`).

The copies are committed (``lift3d/service/static/vendor/<package>/``), so a wheel or an image built without Node
serves the page air-gapped; ``make vendor`` refreshes them after ``package.json`` changes a pinned version, and
``tests/playground/test_vendor.py`` fails when they differ from node_modules (after each package's
:attr:`Package.transform`). Each folder keeps the package's ``LICENSE`` and a ``VERSION`` file (the npm version).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "node_modules"
VENDOR = ROOT / "lift3d" / "service" / "static" / "vendor"


def resolve_bare_imports(text: str, target: str) -> str:
    """A three.js addon's ``from 'three'`` made relative to ``three.module.js``, so the page needs no import map (an
    inline script a strict Content-Security-Policy would have to allow)."""
    if not target.startswith("addons/"):
        return text
    up = "../" * target.count("/")
    return text.replace("from 'three';", f"from '{up}three.module.js';")


def drop_source_map(text: str, target: str) -> str:
    """The compiled file without its trailing ``//# sourceMappingURL=…`` line: the maps point at TypeScript sources
    that are not vendored, so a browser's developer tools would only log failed fetches for them."""
    return re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "\n", text)


REDOC_EDITS = {
    # the side menu always shows Redocly's logo from its CDN (the one request the bundle makes to another origin):
    # an empty data: image instead, which fails to decode, so ReDoc hides it (its onError)
    'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"': 'src:"data:,"',
    # webpack's style nonce (__webpack_require__.nc) starts undefined, so the <style> elements the bundle inserts
    # while it loads (perfect-scrollbar's CSS) carry no nonce and a strict policy blocks them: start it from the
    # loading <script>'s data-style-nonce (the /redoc page's nonce for this response)
    "r.nc=void 0;": "r.nc=document.currentScript&&document.currentScript.dataset.styleNonce||void 0;",
}
"""Exact texts of ReDoc's standalone bundle and their replacements (each must occur once)."""


def edit_redoc(text: str, target: str) -> str:
    """ReDoc's bundle with :data:`REDOC_EDITS` applied and without its source map line: the page then loads nothing
    from another origin and every style it inserts carries the page's nonce.

    Raises:
        ValueError: an edit's text does not occur exactly once (a new ReDoc version: check what it loads).
    """
    for old, new in REDOC_EDITS.items():
        if text.count(old) != 1:
            raise ValueError(f"{target}: {old!r} occurs {text.count(old)} times, not once; check the new bundle")
        text = text.replace(old, new)
    return drop_source_map(text, target)


@dataclass(frozen=True)
class Package:
    """One npm package to vendor.

    Attributes:
        name: the npm name (``node_modules/<name>``, ``package.json``'s dependency key).
        files: path in the npm package → path under ``vendor/<folder>`` (the layout the page's imports expect).
        transform: ``(text, target) -> text`` applied to each copied ``.js`` file (identity: a byte copy).
        folder: the folder under ``static/vendor`` (default: ``name``).
    """

    name: str
    files: dict[str, str]
    transform: Callable[[str, str], str] | None = None
    folder: str = ""

    @property
    def source(self) -> Path:
        return NODE_MODULES / self.name

    @property
    def target(self) -> Path:
        return VENDOR / (self.folder or self.name)

    def expected(self, source: str, target: str) -> bytes:
        """The vendored bytes of ``source`` (a path in the npm package) at ``target``."""
        data = (self.source / source).read_bytes()
        if self.transform is None or not target.endswith(".js"):
            return data
        return self.transform(data.decode(), target).encode()


PACKAGES = (
    Package("three", {
        "build/three.module.js": "three.module.js",
        "build/three.core.js": "three.core.js",
        "examples/jsm/loaders/GLTFLoader.js": "addons/loaders/GLTFLoader.js",
        "examples/jsm/controls/OrbitControls.js": "addons/controls/OrbitControls.js",
        "examples/jsm/utils/BufferGeometryUtils.js": "addons/utils/BufferGeometryUtils.js",
        "examples/jsm/utils/SkeletonUtils.js": "addons/utils/SkeletonUtils.js",
        "LICENSE": "LICENSE",
    }, transform=resolve_bare_imports),
    # The browser ESM build: index.js re-exports createParser (parse.js) and ParseError (errors.js), relative imports.
    Package("eventsource-parser", {
        "dist/index.js": "index.js",
        "dist/parse.js": "parse.js",
        "dist/errors.js": "errors.js",
        "LICENSE": "LICENSE",
    }, transform=drop_source_map),
    # /docs: Swagger UI's browser bundle (React included) and its stylesheet; the page's own script starts it.
    Package("swagger-ui-dist", {
        "swagger-ui-bundle.js": "swagger-ui-bundle.js",
        "swagger-ui.css": "swagger-ui.css",
        "LICENSE": "LICENSE",
        "NOTICE": "NOTICE",
    }, transform=drop_source_map),
    # /redoc: the standalone bundle renders <redoc spec-url="…"> by itself (no inline script).
    Package("redoc", {
        "bundles/redoc.standalone.js": "redoc.standalone.js",
        "bundles/redoc.standalone.js.LICENSE.txt": "redoc.standalone.js.LICENSE.txt",
        "LICENSE": "LICENSE",
    }, transform=edit_redoc),
)
"""What the playground and the API documentation pages load, per npm package."""


def installed_version(package: Package) -> str:
    """The version in ``node_modules/<name>/package.json``."""
    return json.loads((package.source / "package.json").read_text())["version"]


def vendor(package: Package) -> str:
    """Copy ``package``'s files into its vendor folder and write ``VERSION``; returns the version."""
    for source, target in package.files.items():
        destination = package.target / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(package.expected(source, target))
    version = installed_version(package)
    (package.target / "VERSION").write_text(version + "\n")
    return version


def main() -> int:
    missing = [p.name for p in PACKAGES if not p.source.is_dir()]
    if missing:
        print(f"vendor_js: node_modules lacks {', '.join(missing)}; run `npm ci` first", file=sys.stderr)
        return 1
    for package in PACKAGES:
        version = vendor(package)
        print(f"vendored {package.name} {version} into {package.target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
