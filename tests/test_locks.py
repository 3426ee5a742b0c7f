"""The lock files in requirements/ agree with what they lock.

Each lock records the `uv pip compile` command that made it (scripts/lock); from it the test reads which
extras, inputs and constraints the lock is for, and checks, with no network: every requirement of
pyproject.toml (and of the .in / constraints files) is pinned by the lock to a version it admits;
every pin is exact and hashed; every package the lock says pyproject asks for, pyproject does ask for
(a dependency removed from pyproject but left in the lock fails).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = sorted((ROOT / "requirements").glob("*.txt"))
# The environment every lock is for: CPython 3.11 on Linux x86-64 (the images' and CI's).
ENVIRONMENT = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7",
               "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: int
    via: tuple[str, ...]


def parse_lock(path: Path) -> tuple[list[str], dict[str, Pin]]:
    """(the compile command's arguments, the pins by canonical name)."""
    text = path.read_text(encoding="utf-8")
    command = re.search(r"^#\s+uv pip compile (.+)$", text, re.MULTILINE)
    assert command, f"{path.name}: no `uv pip compile` command in its header: regenerate it with scripts/lock"
    pins: dict[str, Pin] = {}
    # one entry: `name==version \` then `--hash=` lines, then `# via` comment lines
    for match in re.finditer(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})*)\n"
                             r"((?:\s+#.*\n?)*)", text, re.MULTILINE):
        name, version, hashes, comments = match.groups()
        via = re.findall(r"#\s+(?:via\s+)?([^\s#][^\n]*)", comments)
        pins[canonicalize_name(name)] = Pin(name, Version(version), hashes.count("--hash="),
                                            tuple(v.strip() for v in via if v.strip() != "via"))
    return shlex.split(command[1]), pins


def command_inputs(args: list[str]) -> tuple[list[str], list[Path], list[Path]]:
    """(extras, input files, constraint files) named by a `uv pip compile` command line."""
    extras, inputs, constraints = [], [], []
    words = iter(args)
    for word in words:
        if word == "--extra":
            extras.append(next(words))
        elif word in ("-c", "--constraint"):
            constraints.append(ROOT / next(words))
        elif word.startswith("-"):
            if word not in ("--generate-hashes", "-q", "--upgrade"):
                next(words)  # the option's value
        else:
            inputs.append(ROOT / word)
    return extras, inputs, constraints


def requirements_file(path: Path) -> list[Requirement]:
    """A requirements or constraints file's requirements; another lock's pins as `name==version`."""
    if path.parent.name == "requirements" and path.suffix == ".txt":
        return [Requirement(f"{pin.name}=={pin.version}") for pin in parse_lock(path)[1].values()]
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def pyproject_requirements(extras: list[str]) -> list[Requirement]:
    """The runtime dependencies and those of `extras`, following extras that name others (`spa-localizer[batch]`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project["optional-dependencies"]
    wanted: list[Requirement] = []
    seen: set[str] = set()

    def add(lines: list[str]) -> None:
        for line in lines:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) != "spa-localizer":
                wanted.append(requirement)
                continue
            for extra in sorted(requirement.extras - seen):
                seen.add(extra)
                add(optional[extra])

    add(project["dependencies"])
    for extra in extras:
        if extra not in seen:
            seen.add(extra)
            add(optional[extra])
    return wanted


def test_there_is_a_lock_for_each_environment() -> None:
    assert {p.name for p in LOCKS} == {"serve.txt", "gpu.txt", "test.txt"}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_satisfies_pyproject_and_pins_every_package_exactly(lock: Path) -> None:
    args, pins = parse_lock(lock)
    extras, inputs, constraints = command_inputs(args)
    assert ROOT / "pyproject.toml" in inputs, f"{lock.name} is not compiled from pyproject.toml"
    asked = pyproject_requirements(extras)
    for path in inputs:
        if path.suffix != ".toml":
            asked += requirements_file(path)
    # constraints bound versions where they name a locked package, without asking for it
    bounds = [r for path in constraints for r in requirements_file(path)
              if canonicalize_name(r.name) in pins]
    problems = []
    for requirement in asked:
        if requirement.marker is not None and not requirement.marker.evaluate(ENVIRONMENT):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is asked for but not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} is asked for but the lock pins {pin.version}")
    for bound in bounds:
        pin = pins[canonicalize_name(bound.name)]
        if not bound.specifier.contains(pin.version, prereleases=True):
            problems.append(f"the constraint {bound} is broken: the lock pins {pin.version}")
    names_asked = {canonicalize_name(r.name) for r in asked}
    for name, pin in pins.items():
        if pin.hashes == 0:
            problems.append(f"{pin.name}=={pin.version} has no hash")
        if "spa-localizer (pyproject.toml)" in pin.via and name not in names_asked:
            problems.append(f"{pin.name} is locked as a pyproject requirement, but pyproject no longer asks for it")
    assert len(pins) >= 10, f"{lock.name}: only {len(pins)} pins read: the parser and the file disagree"
    assert not problems, f"{lock.name} (regenerate with scripts/lock):\n" + "\n".join(problems)


def test_installers_use_the_locks() -> None:
    """Every place that installs the project's dependencies installs a lock, with its hashes."""
    users = {
        "Dockerfile": "requirements/serve.txt",
        "docker/Dockerfile.gpu": "requirements/gpu.txt",
        "scripts/serve": "requirements/serve.txt",
        "scripts/test": "requirements/test.txt",
        "scripts/test-container": "requirements/test.txt",
    }
    for user, lock in users.items():
        text = (ROOT / user).read_text(encoding="utf-8")
        assert lock in text, f"{user} does not install {lock}"
        assert "--require-hashes" in text, f"{user} installs without --require-hashes"


def test_gpu_lock_is_one_cuda_major() -> None:
    """The packages whose name or version says which CUDA they are for all say the same one (the full check,
    against each package's metadata on PyPI, is tests/test_gpu_requirements.py)."""
    _, pins = parse_lock(ROOT / "requirements" / "gpu.txt")
    majors = {}
    for name, pin in pins.items():
        if match := re.fullmatch(r"cupy-cuda(\d+)x|nvidia-.+-cu(\d+)", name):
            majors[name] = int(match[1] or match[2])
        elif name in ("cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjitlink"):
            majors[name] = pin.version.major
    assert {"cupy-cuda13x", "cuda-toolkit", "onnxruntime-gpu"} <= set(pins)
    assert len(set(majors.values())) == 1, f"CUDA majors disagree: {majors}"
