"""Render a kustomization the way `kustomize build` does for what deploy/k8s uses: resources (files
and folders) and JSON 6902 patches (applied by the jsonpatch library) with a kind/name target.
Anything else is refused, so a new kustomize feature in deploy/k8s fails loudly here instead of
being silently ignored. (No kustomize binary can be installed here: it is not on PyPI or Debian's
bookworm.)"""

from __future__ import annotations

from pathlib import Path

import jsonpatch
import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches"}


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
            resources[i] = jsonpatch.apply_patch(resources[i], ops)
    return resources
