"""The playground's vendored three.js is node_modules' pinned version, with bare imports made relative, and the
page names no other origin."""

import json
import re
from pathlib import Path

from lift3d.service.playground import CONTENT_SECURITY_POLICY, STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]


def load_vendor_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vendor_three", ROOT / "tools" / "vendor_three.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendored_files_match_the_pinned_npm_package():
    tool = load_vendor_tool()
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["three"]
    assert (tool.TARGET / "VERSION").read_text().strip() == pinned  # `make vendor` after changing the pin
    installed = json.loads((tool.SOURCE / "package.json").read_text())["version"]
    assert installed == pinned, "node_modules is stale: run `npm ci`"
    for source, target in tool.FILES.items():
        expected = (tool.SOURCE / source).read_bytes()
        if target.startswith("addons/"):
            expected = tool.resolve_bare_imports(expected.decode(), target).encode()
        assert (tool.TARGET / target).read_bytes() == expected, f"{target} differs from node_modules: make vendor"


def test_bare_imports_become_relative_paths():
    tool = load_vendor_tool()
    text = "import { Mesh } from 'three';\nimport { a } from '../utils/x.js';\n"
    assert tool.resolve_bare_imports(text, "addons/loaders/GLTFLoader.js") == (
        "import { Mesh } from '../../three.module.js';\nimport { a } from '../utils/x.js';\n")
    for path in (STATIC_DIR / "vendor" / "three" / "addons").rglob("*.js"):
        # import statements only (the files' doc comments show `from 'three/addons/…'` as usage examples)
        assert re.search(r"^(?:\}|import\b.*)\s*from\s+'three(?:/[^']*)?';", path.read_text(), re.M) is None, path


def test_the_page_loads_nothing_from_another_origin():
    for path in STATIC_DIR.glob("*.*"):
        text = path.read_text()
        assert re.search(r"(src|href)=\"(https?:)?//", text) is None, path
        assert re.search(r"""(import|from|fetch\()\s*['"`]https?://""", text) is None, path
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
