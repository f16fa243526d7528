"""Generate the `serveConfigV2` block of k8s/rayservice.yaml from serve_config.yaml.

The KubeRay RayService embeds a Ray Serve config as a YAML string (`spec.serveConfigV2`). It must describe the same
application as serve_config.yaml (what `serve deploy` uses); a hand-kept copy drifts (autoscaling settings, args),
so this script derives the block from serve_config.yaml and rewrites only that block, leaving every other line of
the manifest (comments, the rayClusterConfig, the PodMonitor after `---`) byte-for-byte unchanged.

    python tools/sync_rayservice.py            # rewrite k8s/rayservice.yaml in place (`make k8s`)
    python tools/sync_rayservice.py --check    # exit 1 if the manifest is out of date (for tests / CI)
    python tools/sync_rayservice.py --root DIR # operate on DIR/serve_config.yaml and DIR/k8s/rayservice.yaml
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

SERVE_CONFIG = Path("serve_config.yaml")
MANIFEST = Path("k8s") / "rayservice.yaml"
COMMAND = "make k8s"
GENERATED_HEADER = "# generated from serve_config.yaml by tools/sync_rayservice.py (make k8s); do not edit"
# In the cluster image the repository lives at /app (the pods' workingDir), so every application's code is taken
# from there rather than from serve_config.yaml's local runtime_env. `local://` names a directory that already
# exists on every node; Ray refuses a `file://` working_dir that is not an archive (.zip, .tar.gz, ...).
CLUSTER_RUNTIME_ENV = {"working_dir": "local:///app"}
BLOCK_KEY = re.compile(r"^(?P<indent> *)serveConfigV2: \|[ \t]*$")


class _IndentedDumper(yaml.SafeDumper):
    """SafeDumper that indents list items under their key (`key:\\n  - item`), as the hand-written manifest did."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        """Never emit indentless sequences."""
        return super().increase_indent(flow, False)


def serve_config_v2(serve_config_text: str) -> str:
    """The serveConfigV2 text (ending in a newline) for the given serve_config.yaml contents.

    Keeps serve_config.yaml's top-level keys and their order; each application's runtime_env is replaced by the
    cluster one (CLUSTER_RUNTIME_ENV). Comments of serve_config.yaml are not carried over.
    """
    config = yaml.safe_load(serve_config_text)
    if not isinstance(config, dict) or not isinstance(config.get("applications"), list):
        raise ValueError("serve_config.yaml has no `applications:` list")
    for app in config["applications"]:
        app["runtime_env"] = dict(CLUSTER_RUNTIME_ENV)
    body = yaml.dump(config, Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=10_000, indent=2)
    return f"{GENERATED_HEADER}\n{body}"


def _block_span(lines: list[str]) -> tuple[int, int, str]:
    """(first, end, indent) of the serveConfigV2 literal block's content lines in `lines` (with line endings).

    lines[first:end] are the block's content lines; `indent` is the indentation of the `serveConfigV2:` key.
    Trailing blank lines after the block are left outside it.
    """
    starts = [i for i, line in enumerate(lines) if BLOCK_KEY.match(line.rstrip("\r\n"))]
    if len(starts) != 1:
        raise ValueError(f"expected exactly one `serveConfigV2: |` line in the manifest, found {len(starts)}")
    key = starts[0]
    indent = BLOCK_KEY.match(lines[key].rstrip("\r\n")).group("indent")
    end = key + 1
    for i in range(key + 1, len(lines)):
        text = lines[i].rstrip("\r\n")
        if not text.strip():
            continue  # blank lines belong to the block only if more content follows
        if len(text) - len(text.lstrip(" ")) <= len(indent):
            break
        end = i + 1
    return key + 1, end, indent


def render_manifest(manifest_text: str, serve_config_text: str) -> str:
    """The manifest text with its serveConfigV2 block replaced by the one generated from serve_config.yaml."""
    lines = manifest_text.splitlines(keepends=True)
    first, end, indent = _block_span(lines)
    newline = "\r\n" if lines[first - 1].endswith("\r\n") else "\n"
    pad = indent + "  "
    block = [(pad + line if line else line) + newline for line in serve_config_v2(serve_config_text).splitlines()]
    return "".join(lines[:first] + block + lines[end:])


def _read(path: Path) -> str:
    """The file's text, with its line endings untouched."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` via a temporary file in the same folder, keeping the file's permissions."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: rewrite the manifest, or with --check report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if k8s/rayservice.yaml differs from what would be written")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root holding serve_config.yaml and k8s/ (default: this checkout)")
    args = parser.parse_args(argv)
    manifest = args.root / MANIFEST
    current = _read(manifest)
    wanted = render_manifest(current, _read(args.root / SERVE_CONFIG))
    if args.check:
        if current != wanted:
            print(f"{MANIFEST} is out of date with {SERVE_CONFIG}: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        _write_atomically(manifest, wanted)
        print(f"updated {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
