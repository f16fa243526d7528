"""Copy the three.js files the playground loads from node_modules/three into the package's static folder.

The copies are committed (``lift3d/service/static/vendor/three/``), so a wheel or an image built without Node
serves the page air-gapped; ``make vendor`` refreshes them after ``package.json`` changes the pinned version, and
``tests/test_playground.py`` fails when they differ from node_modules (after :func:`resolve_bare_imports`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "node_modules" / "three"
TARGET = ROOT / "lift3d" / "service" / "static" / "vendor" / "three"
FILES = {
    "build/three.module.js": "three.module.js",
    "build/three.core.js": "three.core.js",
    "examples/jsm/loaders/GLTFLoader.js": "addons/loaders/GLTFLoader.js",
    "examples/jsm/controls/OrbitControls.js": "addons/controls/OrbitControls.js",
    "examples/jsm/utils/BufferGeometryUtils.js": "addons/utils/BufferGeometryUtils.js",
    "examples/jsm/utils/SkeletonUtils.js": "addons/utils/SkeletonUtils.js",
    "LICENSE": "LICENSE",
}
"""node_modules/three path → path under the vendor folder (the layout the import map expects)."""


def resolve_bare_imports(text: str, target: str) -> str:
    """The addon's ``from 'three'`` made relative to ``three.module.js``, so the page needs no import map (an
    inline script a strict Content-Security-Policy would have to allow)."""
    up = "../" * target.count("/")
    return text.replace("from 'three';", f"from '{up}three.module.js';")


def main() -> int:
    if not SOURCE.is_dir():
        print("vendor_three: node_modules/three is missing; run `npm ci` first", file=sys.stderr)
        return 1
    for source, target in FILES.items():
        destination = TARGET / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE / source, destination)
        if target.startswith("addons/"):
            destination.write_text(resolve_bare_imports(destination.read_text(), target))
    version = __import__("json").loads((SOURCE / "package.json").read_text())["version"]
    (TARGET / "VERSION").write_text(version + "\n")
    print(f"vendored three {version} into {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
