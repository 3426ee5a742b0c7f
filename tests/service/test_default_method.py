"""The model card decides the method a request without `method` gets: /v1/localize, the named routes and the
batch routes, each by its own model's card; /v1/models shows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from service_helpers import make_image, serving
from spa_service.http.app import create_app
from spa_service.settings import Settings

pytestmark = pytest.mark.anyio


def copy_with_default(model_dir: Path, out: Path, name: str, default_method: str | None) -> Path:
    """The model at `model_dir` under another name; `default_method` None writes a card without the field,
    as cards were before it existed."""
    shutil.copytree(model_dir, out)
    card = json.loads((out / "model.json").read_text())
    card["name"] = name
    card.pop("default_method", None)
    if default_method is not None:
        card["default_method"] = default_method
    (out / "model.json").write_text(json.dumps(card))
    return out


def answer(response) -> tuple:
    """What depends on the method: boxes and heatmaps of every prediction."""
    assert response.status_code == 200, response.text
    return tuple((tuple(map(tuple, p["boxes"])), p["heatmap"]) for p in response.json()["predictions"])


async def test_a_request_without_method_gets_its_models_default(tiny_model_dir: Path, tmp_path: Path) -> None:
    cam = copy_with_default(tiny_model_dir, tmp_path / "cam", "tiny-cam", "cam")
    old = copy_with_default(tiny_model_dir, tmp_path / "old", "tiny-old", None)
    data = make_image(5, (120, 90), "PNG")
    files = {"image": ("a.png", data)}
    params = {"topk": 3}
    async with serving(create_app(Settings(model_dirs=[cam, old], providers="cpu"))) as client:
        listing = (await client.get("/v1/models")).json()
        assert {m["name"]: m["default_method"] for m in listing["models"]} == {"tiny-cam": "cam", "tiny-old": "scg"}
        assert (await client.get("/v1/models/tiny-cam")).json()["default_method"] == "cam"

        by_method = {
            (name, method): answer(await client.post(f"/v1/models/{name}/localize", params={**params, "method": method},
                                                     files=files))
            for name in ("tiny-cam", "tiny-old") for method in ("cam", "scg")
        }
        # Same network under both names: the methods must differ for the test to tell them apart.
        assert by_method["tiny-cam", "cam"] != by_method["tiny-cam", "scg"]
        assert by_method["tiny-cam", "cam"] == by_method["tiny-old", "cam"]

        assert answer(await client.post("/v1/localize", params=params, files=files)) == by_method["tiny-cam", "cam"]
        assert answer(await client.post("/v1/models/tiny-cam/localize", params=params, files=files)) == by_method[
            "tiny-cam", "cam"]
        assert answer(await client.post("/v1/models/tiny-old/localize", params=params, files=files)) == by_method[
            "tiny-old", "scg"]
        for url, expected in (("/v1/localize/batch", "cam"), ("/v1/models/tiny-cam/localize/batch", "cam"),
                              ("/v1/models/tiny-old/localize/batch", "scg")):
            response = await client.post(url, params=params, files=[("images", ("a.png", data))] * 2)
            assert response.status_code == 200
            name = "tiny-old" if "old" in url else "tiny-cam"
            for result in response.json()["results"]:
                assert tuple((tuple(map(tuple, p["boxes"])), p["heatmap"]) for p in result["predictions"]) == by_method[
                    name, expected]

        # An explicit method still wins over the card's.
        assert answer(await client.post("/v1/localize", params={**params, "method": "scg"}, files=files)) == by_method[
            "tiny-cam", "scg"]
        schema = (await client.get("/openapi.json")).json()
        method = next(p for p in schema["paths"]["/v1/localize"]["post"]["parameters"] if p["name"] == "method")
        assert "default_method" in method["description"]
