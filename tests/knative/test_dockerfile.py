"""The Dockerfile, checked without docker: targets, lock-file installs, user, port, sources."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.knative.consistency import container, template
from tests.knative.manifests import BASE, by_name, kustomize_build

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
FUNCTION_TARGETS = {
    "convert": "geozarr-convert",
    "register": "geozarr-register",
    "augment": "geozarr-augment",
}
HEAVY = ("xarray", "dask", "eopf-geozarr", "zarr", "s3fs")
FAILURES_TARGET = "failures"
RECORDER_MODULE = "geozarr_pipeline.failures.recorder"


def uv_binary() -> str:
    """The uv running the tests (`uv run` sets UV), else the one on PATH; never skipped."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise RuntimeError("no uv: run the tests with `python -m uv run pytest`")
    return found


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, each with its instructions (continuation lines joined)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append(current + line)
        current = ""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, line
            stage = Stage(name=match.group(2) or f"#{len(stages)}", base=match.group(1))
            stages[stage.name] = stage
        elif stage is not None:
            stage.instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last value of an instruction along a stage's FROM chain (USER, CMD, ...)."""
    for stage in lineage(stages, name):
        values = stage.all(keyword)
        if values:
            return values[-1]
    return None


def test_parser_reads_continuations_and_stages() -> None:
    parsed = parse_dockerfile("FROM a AS b\nRUN x \\\n  y\n# c\nFROM b AS d\nUSER 1\n")
    assert parsed["b"].instructions == [("RUN", "x y")]
    assert lineage(parsed, "d")[1].name == "b"


@pytest.mark.parametrize("stage_name", sorted(FUNCTION_TARGETS))
def test_function_target_installs_only_its_package_from_the_lock(
    stages: dict[str, Stage], stage_name: str
) -> None:
    assert stage_name in stages, f"no target {stage_name}"
    package = FUNCTION_TARGETS[stage_name]
    copies = stages[stage_name].all("COPY")
    build = [c for c in copies if c.startswith("--from=")]
    assert len(build) == 1
    build_stage = build[0].split()[0].removeprefix("--from=")
    syncs = [r for s in lineage(stages, build_stage) for r in s.all("RUN") if "uv sync" in r]
    assert syncs, f"{build_stage} never runs uv sync"
    for command in syncs:
        words = shlex.split(command[command.index("uv sync") :])
        assert "--frozen" in words
        assert "--no-dev" in words
        assert words[words.index("--package") + 1] == package
    assert any("--no-editable" in c for c in syncs)


@pytest.mark.parametrize("stage_name", [*sorted(FUNCTION_TARGETS), FAILURES_TARGET])
def test_target_runs_non_root_on_port(stages: dict[str, Stage], stage_name: str) -> None:
    user = effective(stages, stage_name, "USER")
    assert user is not None, "no USER: the image would run as root"
    assert user.split(":")[0] not in ("root", "0")
    cmd = effective(stages, stage_name, "CMD")
    assert cmd is not None
    assert "${PORT}" in cmd or "$PORT" in cmd
    if stage_name in FUNCTION_TARGETS:
        words = shlex.split(yaml.safe_load(cmd)[-1])
        assert words[:2] == ["exec", "functions-framework"]
        assert words[words.index("--target") + 1] == "handle"
        source = words[words.index("--source") + 1]
        copied = [c.split()[-1] for c in stages[stage_name].all("COPY")]
        assert any(source.startswith(dest.rstrip("/") + "/") for dest in copied)
        in_repo = ROOT / source.removeprefix("/app/")
        assert in_repo.is_file(), f"{source} is not {in_repo} in the repository"
        # The target is a module-level `handle` (a def, or the stage runner's handler).
        assert re.search(r"^(def handle\b|handle = )", in_repo.read_text(), re.MULTILINE)


def test_every_copied_path_exists_and_is_not_ignored(stages: dict[str, Stage]) -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in stages.values():
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
                assert source.split("/")[0] not in ignored, f"COPY {source}: in .dockerignore"


def test_images_named_in_the_manifests_have_a_target(stages: dict[str, Stage]) -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for image in kustomization["images"]:
        target = image["name"].removeprefix("geozarr-")
        assert target in stages, f"{image['name']}: no Dockerfile target {target}"
    services = by_name(kustomize_build(BASE), "Service")
    assert {
        s["spec"]["template"]["spec"]["containers"][0]["image"].split("/")[-1].split(":")[0]
        for s in services.values()
    } == {i["name"] for i in kustomization["images"]}


def sync_words(stages: dict[str, Stage], target: str) -> list[str]:
    """The last `uv sync` of the build stage a target copies its environment from."""
    (build,) = [c for c in stages[target].all("COPY") if c.startswith("--from=")]
    build_stage = build.split()[0].removeprefix("--from=")
    syncs = [r for s in lineage(stages, build_stage) for r in s.all("RUN") if "uv sync" in r]
    assert syncs, f"{build_stage} never runs uv sync"
    return shlex.split(syncs[0][syncs[0].index("uv sync") :])


def option_values(words: list[str], option: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words) if word == option]


def test_failures_target_installs_the_shared_package_with_boto3(
    stages: dict[str, Stage],
) -> None:
    words = sync_words(stages, FAILURES_TARGET)
    assert {"--frozen", "--no-dev", "--no-editable"} <= set(words)
    assert option_values(words, "--package") == ["geozarr-pipeline-shared"]
    assert option_values(words, "--extra") == ["s3"]
    cmd = effective(stages, FAILURES_TARGET, "CMD")
    assert cmd is not None
    assert shlex.split(yaml.safe_load(cmd)[-1]) == [
        *("exec", "python", "-m", RECORDER_MODULE),
        *("--host", "0.0.0.0", "--port", "${PORT}"),
    ]


def image_env(stages: dict[str, Stage], target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(lineage(stages, target)):
        for args in stage.all("ENV"):
            env.update(pair.partition("=")[::2] for pair in shlex.split(args))
    return env


def test_home_is_a_writable_volume_in_every_service(stages: dict[str, Stage]) -> None:
    """HOME is set in the image, and every Service mounts an emptyDir there (the root
    filesystem is read-only)."""
    services = by_name(kustomize_build(BASE), "Service")
    for service in services.values():
        target = container(service)["image"].split("/")[-1].split(":")[0].removeprefix("geozarr-")
        home = image_env(stages, target).get("HOME")
        assert home, f"{target}: HOME is not set in the image"
        spec = template(service)[1]
        scratch = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container(service).get("volumeMounts", [])}
        assert mounts.get(home) in scratch, f"{target}: HOME {home} is not an emptyDir mount"


def pinned_uv_versions() -> dict[str, str]:
    """The uv version the Makefile installs and the one the Dockerfile copies uv from."""
    makefile = re.findall(r"pip install\b[^\n]*\buv==([0-9][^\s]*)", MAKEFILE.read_text())
    dockerfile = re.findall(r"^ARG UV_IMAGE=\S+:(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(makefile) == 1, "the Makefile pins uv once (pip install uv==X)"
    assert len(dockerfile) == 1, "the Dockerfile pins UV_IMAGE once"
    return {"Makefile": makefile[0], "Dockerfile": dockerfile[0]}


def test_image_makefile_and_tests_use_one_uv() -> None:
    pinned = pinned_uv_versions()
    running = subprocess.run(
        [uv_binary(), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()[1]
    assert {**pinned, "tests": running} == dict.fromkeys(
        ["Makefile", "Dockerfile", "tests"], running
    )


def lock_slice(stages: dict[str, Stage], target: str) -> str:
    """What the image of `target` installs: its `uv sync` selection exported from uv.lock."""
    words = sync_words(stages, target)
    selection = [
        *(arg for package in option_values(words, "--package") for arg in ("--package", package)),
        *(arg for extra in option_values(words, "--extra") for arg in ("--extra", extra)),
    ]
    return subprocess.run(
        [uv_binary(), "export", "--frozen", "--no-dev", "--no-hashes", *selection],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def exported_names(exported: str) -> set[str]:
    return {
        re.split(r"[=<>; \[]", line, maxsplit=1)[0].lower()
        for line in exported.splitlines()
        if line and line[0].isalpha()
    }


@pytest.mark.parametrize("target", ["register", "augment", FAILURES_TARGET])
def test_small_images_lock_slice_has_no_heavy_dependencies(
    stages: dict[str, Stage], target: str
) -> None:
    names = exported_names(lock_slice(stages, target))
    assert "pydantic" in names
    assert not names & set(HEAVY), f"{target} would install {sorted(names & set(HEAVY))}"


@pytest.mark.parametrize("target", ["convert", "register", "augment", FAILURES_TARGET])
def test_no_image_installs_the_local_stand_ins(stages: dict[str, Stage], target: str) -> None:
    exported = lock_slice(stages, target)
    members = {line.split(";")[0].strip() for line in exported.splitlines() if line[:3] == "-e "}
    assert "-e ./shared" in members
    assert "-e ./local" not in members, f"{target} would install the local stand-ins"
    assert "titiler-xarray" not in exported_names(exported)


def test_failures_lock_slice_has_boto3_without_functions_framework(
    stages: dict[str, Stage],
) -> None:
    names = exported_names(lock_slice(stages, FAILURES_TARGET))
    assert "boto3" in names
    assert "functions-framework" not in names


def test_convert_lock_slice_has_the_converter(stages: dict[str, Stage]) -> None:
    exported = lock_slice(stages, "convert")
    assert re.search(r"^eopf-geozarr==", exported, re.MULTILINE)
    assert re.search(r"^functions-framework==", exported, re.MULTILINE)
