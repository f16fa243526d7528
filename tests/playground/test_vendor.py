"""The playground's vendored JavaScript (three.js, eventsource-parser) is node_modules' pinned version, with three's
bare imports made relative and the parser's source-map comments dropped, and the page names no other origin."""

import json
import re
from pathlib import Path

import pytest

from lift3d.service.api.routes.playground import CONTENT_SECURITY_POLICY, STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]


def load_vendor_tool():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("vendor_js", ROOT / "tools" / "vendor_js.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


TOOL = load_vendor_tool()


@pytest.mark.parametrize("package", TOOL.PACKAGES, ids=lambda p: p.name)
def test_vendored_files_match_the_pinned_npm_package(package):
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"][package.name]
    assert (package.target / "VERSION").read_text().strip() == pinned  # `make vendor` after changing the pin
    assert TOOL.installed_version(package) == pinned, "node_modules is stale: run `npm ci`"
    assert package.target.parent == STATIC_DIR / "vendor" and "LICENSE" in package.files.values()
    vendored = {path.relative_to(package.target).as_posix() for path in package.target.rglob("*") if path.is_file()}
    assert vendored == set(package.files.values()) | {"VERSION"}  # nothing stale left behind
    for source, target in package.files.items():
        assert (package.target / target).read_bytes() == package.expected(source, target), (
            f"{package.name}/{target} differs from node_modules: make vendor")


def test_bare_imports_become_relative_paths():
    text = "import { Mesh } from 'three';\nimport { a } from '../utils/x.js';\n"
    assert TOOL.resolve_bare_imports(text, "addons/loaders/GLTFLoader.js") == (
        "import { Mesh } from '../../three.module.js';\nimport { a } from '../utils/x.js';\n")
    assert TOOL.resolve_bare_imports(text, "three.module.js") == text
    for path in (STATIC_DIR / "vendor" / "three" / "addons").rglob("*.js"):
        # import statements only (the files' doc comments show `from 'three/addons/…'` as usage examples)
        assert re.search(r"^(?:\}|import\b.*)\s*from\s+'three(?:/[^']*)?';", path.read_text(), re.M) is None, path


def test_the_parser_is_vendored_without_source_maps_and_imports_only_its_own_files():
    assert TOOL.drop_source_map("export { a } from './a.js';\n//# sourceMappingURL=index.js.map", "index.js") == (
        "export { a } from './a.js';\n")
    folder = STATIC_DIR / "vendor" / "eventsource-parser"
    for path in folder.glob("*.js"):
        text = path.read_text()
        assert "sourceMappingURL" not in text, path
        for imported in re.findall(r"^(?:import|export)\b[^'\n]*from\s+'([^']+)';", text, re.M):
            assert imported.startswith("./") and (folder / imported).is_file(), (path, imported)
    app = (STATIC_DIR / "app.js").read_text()
    assert "from './vendor/eventsource-parser/index.js';" in app  # relative, like three: no import map needed


def test_the_page_loads_nothing_from_another_origin():
    for path in STATIC_DIR.glob("*.*"):
        text = path.read_text()
        assert re.search(r"(src|href)=\"(https?:)?//", text) is None, path
        assert re.search(r"""(import|from|fetch\()\s*['"`]https?://""", text) is None, path
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
