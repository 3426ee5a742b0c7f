"""The GPU install resolves to one CUDA major: onnxruntime-gpu, cupy and every NVIDIA package.

pip resolves the project's runtime dependencies plus its `gpu` extra under docker/constraints-gpu.txt
for the GPU image's platform (CPython on manylinux x86_64) as a dry run. `fast-deps` reads each
wheel's metadata with HTTP range requests, so the gigabytes of CUDA wheels are not downloaded.
Needs PyPI; skipped, saying so, only when it cannot be reached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "docker" / "constraints-gpu.txt"
# The GPU image's Debian (bookworm) has glibc 2.36; pip matches manylinux tags exactly, so list them all.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(5, 37)] + [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
]
IMAGE_PYTHON = "3.11"  # docker/Dockerfile.gpu's base
PROBE_URL = "https://pypi.org/simple/cupy-cuda13x/"


def gpu_requirements() -> list[str]:
    """What `pip install '.[gpu]'` asks for: the runtime dependencies and the gpu extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["gpu"]]


def cuda_majors(installs: list[dict[str, Any]]) -> dict[str, int]:
    """Package -> the CUDA major it is built for, for each CUDA package in a pip report's `install` list.

    The name says it for cupy-cudaNNx and nvidia-*-cuNN; cuda-toolkit's and cuda-bindings' versions
    are CUDA's; onnxruntime-gpu's `cuda` extra names the CUDA runtime it needs; an unsuffixed
    nvidia-* library (cuFFT, cuRAND... have their own version lines) must be the release that the
    resolved cuda-toolkit pins. Raises AssertionError for an NVIDIA package none of this covers.
    """
    metadata = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in installs}
    toolkit = metadata.get("cuda-toolkit")
    pins = {}
    if toolkit is not None:
        for line in toolkit.get("requires_dist") or []:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement.specifier
    majors: dict[str, int] = {}
    for name, meta in metadata.items():
        version = Version(meta["version"])
        if match := re.fullmatch(r"cupy-cuda(\d+)x", name):
            majors[name] = int(match[1])
        elif match := re.fullmatch(r"nvidia-.+-cu(\d+)", name):
            majors[name] = int(match[1])
        elif name in ("cuda-toolkit", "cuda-bindings"):
            majors[name] = version.major
        elif name == "onnxruntime-gpu":
            majors[name] = _runtime_major(meta.get("requires_dist") or [])
        elif name.startswith("nvidia-"):
            source = f"cuda-toolkit {toolkit['version']} does not name it" if toolkit else "no cuda-toolkit"
            assert name in pins, f"cannot tell which CUDA {name} {version} is for ({source})"
            assert version in pins[name], (
                f"{name} {version} is not cuda-toolkit {toolkit['version']}'s ({pins[name]})"
            )
            majors[name] = Version(toolkit["version"]).major
    return majors


def _runtime_major(requires_dist: list[str]) -> int:
    """The CUDA major of the nvidia-cuda-runtime(-cuNN) that onnxruntime-gpu's metadata requires."""
    for line in requires_dist:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if match := re.fullmatch(r"nvidia-cuda-runtime(?:-cu(\d+))?", name):
            if match[1]:
                return int(match[1])
            (spec,) = requirement.specifier
            return Version(spec.version).major
    raise AssertionError("onnxruntime-gpu's metadata names no nvidia-cuda-runtime")


def resolve(python_version: str) -> list[dict[str, Any]]:
    """pip's dry-run report (`install` list) for the GPU requirements on the image's platform."""
    platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", "-", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python_version, *platform, "-c", str(CONSTRAINTS), *gpu_requirements(),
    ]  # fmt: skip
    result = subprocess.run([*command, "--use-feature=fast-deps"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "fast-deps" in result.stderr and "invalid choice" in result.stderr:
        # A pip without fast-deps: the same resolution, downloading the wheels to read their metadata.
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"pip could not resolve the GPU requirements:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)["install"]


@pytest.fixture(scope="module")
def pypi() -> None:
    try:
        urllib.request.urlopen(PROBE_URL, timeout=15).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"PyPI is unreachable ({exc}): cannot resolve the GPU requirements")


def test_gpu_stack_has_one_cuda_major(pypi: None) -> None:
    installs = resolve(IMAGE_PYTHON)
    names = {canonicalize_name(i["metadata"]["name"]) for i in installs}
    majors = cuda_majors(installs)
    for needed in ("onnxruntime-gpu", "cupy-cuda13x", "cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cudnn-cu13"):
        assert needed in majors, f"{needed} missing from the resolution: {sorted(names)}"
    assert "onnxruntime" not in names, "the CPU onnxruntime would shadow onnxruntime-gpu (same module)"
    assert set(majors.values()) == {13}, f"CUDA majors disagree: {majors}"


def _entry(name: str, version: str, *requires: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


TOOLKIT = _entry(
    "cuda-toolkit",
    "13.0.2",
    'nvidia-cufft==12.0.0.61.*; extra == "cufft"',
    'nvidia-nvjitlink==13.0.88.*; extra == "nvjitlink"',
)
ORT_13 = _entry("onnxruntime-gpu", "1.31.1", 'nvidia-cuda-runtime~=13.0; extra == "cuda"', "numpy>=1.21.6")


def test_majors_read_from_names_versions_and_pins() -> None:
    majors = cuda_majors(
        [
            ORT_13,
            TOOLKIT,
            _entry("cupy-cuda13x", "14.2.0"),
            _entry("nvidia-cudnn-cu13", "9.19.0.56"),
            _entry("nvidia-cufft", "12.0.0.61"),
            _entry("numpy", "2.4.6"),
        ]
    )
    assert majors == {
        "onnxruntime-gpu": 13,
        "cuda-toolkit": 13,
        "cupy-cuda13x": 13,
        "nvidia-cudnn-cu13": 13,
        "nvidia-cufft": 13,
    }


def test_a_cuda_12_cupy_or_onnxruntime_is_caught() -> None:
    # The mix the GPU image used to have: cupy-cuda12x beside a CUDA 13 onnxruntime-gpu.
    assert set(cuda_majors([ORT_13, _entry("cupy-cuda12x", "13.6.0")]).values()) == {12, 13}
    ort_12 = _entry("onnxruntime-gpu", "1.23.2", 'nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"')
    assert cuda_majors([ort_12]) == {"onnxruntime-gpu": 12}


def test_nvidia_library_off_the_toolkit_release_is_refused() -> None:
    with pytest.raises(AssertionError, match=r"nvidia-nvjitlink 13\.5\.37 is not cuda-toolkit 13\.0\.2's"):
        cuda_majors([TOOLKIT, _entry("nvidia-nvjitlink", "13.5.37")])
    with pytest.raises(AssertionError, match="cannot tell which CUDA nvidia-curand"):
        cuda_majors([TOOLKIT, _entry("nvidia-curand", "10.4.0.35")])
    with pytest.raises(AssertionError, match="cannot tell which CUDA nvidia-cufft"):
        cuda_majors([_entry("nvidia-cufft", "12.0.0.61")])
