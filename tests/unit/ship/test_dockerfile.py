"""The Dockerfile builds both images from this repo's own packages, as a non-root user.

No container engine runs here, so these tests read the Dockerfile the way BuildKit would: stage by stage,
following COPY --from between stages, and checking every COPY source against the repo and .dockerignore.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def _stages() -> dict[str, Stage]:
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", value.strip(), flags=re.IGNORECASE)
            assert match, f"every stage must be named: FROM {value}"
            current = Stage(name=match.group(2), base=match.group(1))
            stages[current.name] = current
        elif current is not None and instruction != "COMMENT":
            current.instructions.append((instruction, value))
    return stages


def _global_args() -> dict[str, str]:
    """ARGs declared before the first FROM: the pinned base images."""
    args: dict[str, str] = {}
    for item in DockerfileParser(path=str(REPO / "Dockerfile")).structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG" and "=" in item["value"]:
            key, _, default = item["value"].partition("=")
            args[key.strip()] = default.strip().strip('"')
    return args


def _copy_parts(value: str) -> tuple[str | None, list[str], str]:
    """Split a COPY value into (--from stage, sources, destination)."""
    words = value.split()
    from_stage = None
    plain = []
    for word in words:
        if word.startswith("--from="):
            from_stage = word.removeprefix("--from=")
        elif not word.startswith("--"):
            plain.append(word)
    return from_stage, plain[:-1], plain[-1]


def _chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target stage plus every stage it copies from (transitively), the target first."""
    seen: list[Stage] = []
    todo = [target]
    while todo:
        stage = stages[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        for value in stage.values("COPY"):
            from_stage, _, _ = _copy_parts(value)
            if from_stage:
                todo.append(from_stage)
    return seen


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, with Docker's glob rules ('*' stays within one segment)."""
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.removeprefix("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def _ignored(relpath: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _context_sources(stages: dict[str, Stage]) -> list[str]:
    sources = []
    for stage in stages.values():
        for value in stage.values("COPY") + stage.values("ADD"):
            from_stage, srcs, _ = _copy_parts(value)
            if from_stage is None:
                sources.extend(srcs)
    return sources


def _final_user(stage: Stage) -> str:
    users = stage.values("USER")
    assert users, f"stage {stage.name} never sets USER, so it would run as root"
    return users[-1].strip()


def test_both_image_targets_exist():
    stages = _stages()
    assert {"operator", "trainer"} <= stages.keys()


def test_every_copy_source_exists_in_the_repo():
    for source in _context_sources(_stages()):
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repo"


def test_dockerignore_keeps_every_file_the_build_copies():
    patterns = _dockerignore_patterns()
    for source in _context_sources(_stages()):
        path = REPO / source
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, f"COPY {source} copies nothing"
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            assert not _ignored(rel, patterns), f".dockerignore drops {rel}, which the Dockerfile copies"


def test_dockerignore_keeps_tests_and_git_out_of_the_context():
    patterns = _dockerignore_patterns()
    for rel in ("tests/unit/ship/test_dockerfile.py", ".git/HEAD", "charts/llmtrain-operator/Chart.yaml"):
        assert _ignored(rel, patterns), f"{rel} should not be sent to the build"


def _installs(stages: dict[str, Stage], target: str, package_dir: str) -> bool:
    """True when the target's stage chain copies the package's sources and pip-installs or builds them."""
    chain = _chain(stages, target)
    copied = [src for stage in chain for v in stage.values("COPY") for src in _copy_parts(v)[1]]
    runs = " ".join(v for stage in chain for v in stage.values("RUN"))
    has_sources = f"{package_dir}/pyproject.toml" in copied and any(
        src.rstrip("/").startswith(f"{package_dir}/llmtrain_") for src in copied
    )
    return has_sources and re.search(rf"pip (install|wheel)\b[^&;]*\./{package_dir}\b", runs) is not None


def _distribution_name(package_dir: str) -> str:
    return tomllib.loads((REPO / package_dir / "pyproject.toml").read_text())["project"]["name"]


def test_operator_image_installs_the_operator_package_and_nothing_of_the_trainer():
    stages = _stages()
    assert _distribution_name("operator") == "llmtrain-operator"
    assert _installs(stages, "operator", "operator")
    build_steps = " ".join(v for s in _chain(stages, "operator") for i, v in s.instructions if i in ("COPY", "RUN"))
    assert "trainer_image" not in build_steps
    assert "torch" not in build_steps, "the operator image must stay slim: no torch"
    deps = tomllib.loads((REPO / "operator/pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.startswith("torch")], "the operator package must not depend on torch"


def test_trainer_image_installs_the_trainer_package_wheel():
    stages = _stages()
    assert _distribution_name("trainer_image") == "llmtrain-trainer"
    assert _installs(stages, "trainer", "trainer_image")
    runs = " ".join(stages["trainer"].values("RUN"))
    assert re.search(r"pip install [^&;]*/wheels/", runs), "the trainer stage must install the built wheel"


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_image_runs_as_a_numeric_non_root_user(target):
    user = _final_user(_stages()[target])
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: kubelet can only verify runAsNonRoot for a numeric uid"
    assert int(uid) != 0


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_image_carries_oci_labels(target):
    labels = " ".join(_stages()[target].values("LABEL"))
    for key in ("title", "description", "source", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, f"{target} lacks org.opencontainers.image.{key}"


def test_base_images_are_pinned_to_exact_versions():
    stages = _stages()
    args = _global_args()
    for stage in stages.values():
        if stage.base in stages:
            continue
        image = args.get(stage.base.strip("${}"), stage.base)
        assert ":" in image, f"{stage.name}: base {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{stage.name}: base {image} is not pinned"


def test_trainer_base_is_a_pytorch_cuda_runtime():
    base = _global_args()[_stages()["trainer"].base.strip("${}")]
    assert base.startswith("pytorch/pytorch:") and "-cuda" in base and base.endswith("-runtime")


def test_operator_command_is_the_console_script():
    stage = _stages()["operator"]
    assert json.loads(stage.values("CMD")[-1]) == ["llmtrain-operator"]
    scripts = tomllib.loads((REPO / "operator/pyproject.toml").read_text())["project"]["scripts"]
    assert "llmtrain-operator" in scripts


def test_trainer_has_no_entrypoint_so_the_pod_command_runs_as_given():
    stage = _stages()["trainer"]
    entrypoints = stage.values("ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1]) == []
