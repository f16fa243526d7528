"""The ``lift3d`` command line.

User errors print one line on stderr and exit with status 2; a missing model or another expected failure
exits with status 1; nothing is written to ``--out`` beyond what finished before the error.
"""

from __future__ import annotations

import sys

import typer

from lift3d.cli.batch import batch
from lift3d.cli.convert import convert_zero123
from lift3d.cli.generate import generate
from lift3d.cli.image import image
from lift3d.cli.keys import keys_app
from lift3d.cli.playground import playground
from lift3d.cli.reconstruct import reconstruct, render_views
from lift3d.cli.render_video import render_video
from lift3d.cli.remote import remote_app
from lift3d.errors import InvalidInputError, Lift3DError
from nerf.mesh import EmptyIsosurfaceError

app = typer.Typer(
    name="lift3d",
    help="Turn one image (or a text prompt) into a 3D asset (GLB).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """lift3d: image or prompt → novel views → NeRF with SDS → GLB."""


app.command("generate")(generate)
app.command("image")(image)
app.command("reconstruct")(reconstruct)
app.command("convert-zero123")(convert_zero123)
app.command("render-views")(render_views)
app.command("render-video")(render_video)
app.command("batch")(batch)
app.command("playground")(playground)
app.add_typer(keys_app, name="keys")
app.add_typer(remote_app, name="remote")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns expected errors into one stderr line and an exit status."""
    try:
        app(args=argv, standalone_mode=False)
    except typer.Abort:
        print("lift3d: interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # bad option syntax or type (typer's vendored click errors)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"lift3d: error: {message}", file=sys.stderr)
        return 2
    except InvalidInputError as exc:
        print(f"lift3d: error: {exc}", file=sys.stderr)
        return 2
    except (Lift3DError, EmptyIsosurfaceError) as exc:
        print(f"lift3d: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lift3d: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
