"""Several models in one server: routing by name, the default model, listings, unknown names, metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import make_image, reference, serving
from spa_service.http.app import create_app
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import BUNDLED_MODEL_DIR, BUNDLED_PHOTO_MODEL_DIR, Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def two_models(tmp_path: Path) -> list[Path]:
    """The bundled real-photo model (1000 classes) first, then the bundled demo model (8 classes)."""
    demo = tmp_path / "demo"
    shutil.copytree(BUNDLED_MODEL_DIR, demo)
    return [BUNDLED_PHOTO_MODEL_DIR, demo]


async def test_each_model_answers_under_its_name_and_the_first_is_the_default(two_models: list[Path]) -> None:
    settings = Settings(model_dirs=two_models, providers="cpu")
    localizers = [Localizer.from_settings(settings, d) for d in two_models]
    photo, demo = (loc.card.name for loc in localizers)
    data = make_image(11, (90, 70), "PNG")
    async with serving(create_app(settings)) as client:
        listing = (await client.get("/v1/models")).json()
        assert listing["default"] == photo
        assert [(m["name"], m["num_classes"]) for m in listing["models"]] == [(photo, 1000), (demo, 8)]
        for localizer in localizers:
            name = localizer.card.name
            want = reference(localizer, data, LocalizeOptions(topk=3))
            got = (await client.post(f"/v1/models/{name}/localize", params={"topk": 3}, files={"image": ("a.png", data)})).json()
            assert got["model"] == name
            assert [p["class_id"] for p in got["predictions"]] == [p.class_id for p in want.predictions]
            assert [p["label"] for p in got["predictions"]] == [p.label for p in want.predictions]
        default = (await client.post("/v1/localize", files={"image": ("a.png", data)})).json()
        assert default["model"] == photo
        batch = await client.post(f"/v1/models/{demo}/localize/batch", files=[("images", ("a.png", data))] * 2)
        assert [r["model"] for r in batch.json()["results"]] == [demo, demo]
        # topk is bounded by the model asked: 1000 classes for the photo model, 8 for the demo.
        assert (await client.post(f"/v1/models/{demo}/localize", params={"topk": 9}, files={"image": ("a.png", data)})).status_code == 422
        assert (await client.post("/v1/localize", params={"topk": 9}, files={"image": ("a.png", data)})).status_code == 200

        # Each model's own samples (its folder's images: not the licence notes).
        for name, folder in zip((photo, demo), two_models, strict=True):
            samples = (await client.get(f"/v1/models/{name}/samples")).json()["samples"]
            assert {s["name"] for s in samples} == {p.name for p in (folder / "samples").iterdir() if p.suffix != ".md"}
        image = await client.get("/" + samples[0]["url"])
        assert image.status_code == 200 and image.content == (two_models[1] / "samples" / samples[0]["name"]).read_bytes()
        assert (await client.get(f"/samples/{demo}/..%2Fmodel.json")).status_code == 404

        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families((await client.get("/metrics")).text)
            for s in family.samples
        }
    # the photo model: its named route, then /v1/localize twice; the demo: its named route and a batch of two.
    assert metrics[("spa_images_processed_total", (("model", photo),))] == 3
    assert metrics[("spa_images_processed_total", (("model", demo),))] == 3
    assert metrics[("spa_ready", (("model", photo),))] == 1.0 and metrics[("spa_ready", (("model", demo),))] == 1.0


async def test_an_unknown_model_is_a_404_naming_the_ones_there_are(settings_for) -> None:
    async with serving(create_app(settings_for())) as client:
        served = (await client.get("/v1/models")).json()["default"]
        for response in (
            await client.post("/v1/models/nope/localize", files={"image": ("a.png", make_image(1))}),
            await client.get("/v1/models/nope"),
            await client.get("/v1/models/nope/samples"),
        ):
            assert response.status_code == 404
            error = response.json()["error"]
            assert error["code"] == "unknown_model" and "'nope'" in error["message"] and served in error["message"]


async def test_two_directories_with_one_model_name_are_refused(tiny_model_dir: Path) -> None:
    app = create_app(Settings(model_dirs=[tiny_model_dir, tiny_model_dir], providers="cpu"))
    with pytest.raises(Exception, match="names must differ"):
        async with serving(app):
            pass
