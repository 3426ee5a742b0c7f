"""Render a kustomization the way `kustomize build` does for what deploy/k8s uses: resources (files
and folders) and JSON 6902 patches with a kind/name target. Anything else is refused, so a new
kustomize feature in deploy/k8s fails loudly here instead of being silently ignored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches"}


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add / replace / remove / test on a copy of `doc`."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        parent = _walk(doc, parents)
        kind = op["op"]
        if kind == "test":
            actual = parent[int(last)] if isinstance(parent, list) else parent[last]
            assert actual == op["value"], f"test failed at {op['path']}: {actual!r} != {op['value']!r}"
        elif isinstance(parent, list):
            if kind == "add":
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[int(last)] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[int(last)]
            else:
                raise ValueError(f"unsupported op {kind!r}")
        elif kind in ("add", "replace"):
            if kind == "replace":
                assert last in parent, f"replace of a missing member {op['path']}"
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        else:
            raise ValueError(f"unsupported op {kind!r}")
    return doc


def render(folder: Path) -> list[dict]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_KEYS
    assert not unknown, f"{folder}: this renderer does not implement {sorted(unknown)}"
    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        assert isinstance(ops, list), f"{patch['path']}: only JSON 6902 patches are rendered here"
        target = patch["target"]
        matched = [i for i, r in enumerate(resources)
                   if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]]
        assert matched, f"{patch['path']}: no {target['kind']} {target['name']}"
        for i in matched:
            resources[i] = apply_json_patch(resources[i], ops)
    return resources
