"""The OpenAPI schema against the real server: schemathesis generates requests from it, and every
answer must be what the schema promises (statuses, content types, bodies), including that
schema-valid requests are accepted and invalid ones refused. Image parts are real images, since
the schema says they must be. The server serves the two bundled models, whose class counts differ
(1000 and 8), so a bound stated for one model but enforced for another fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from helpers.serve import spa_serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import make_image
from spa_service.settings import BUNDLED_MODEL_DIR, BUNDLED_PHOTO_MODEL_DIR

pytestmark = pytest.mark.system

IMAGES = [make_image(seed, (48 + 8 * seed, 40), fmt) for seed, fmt in enumerate(("PNG", "JPEG", "PNG"))]
schemathesis.openapi.format("binary", st.sampled_from(IMAGES))
schemathesis.openapi.media_type("image/*", st.sampled_from(IMAGES))


def test_the_server_keeps_the_schemas_promises(tmp_path: Path) -> None:
    failures = []
    with spa_serve([BUNDLED_PHOTO_MODEL_DIR, BUNDLED_MODEL_DIR], tmp_path / "server.log") as server:
        api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in api.get_all_operations()]
        labels = {operation.label for operation in operations}
        assert len(operations) >= 12  # every route of the API, not an empty schema
        # each model's localize operations under its own path, with its own bounds
        assert {"POST /v1/models/imagenet-lite0/localize", "POST /v1/models/tiny-spa-synth-ram/localize/batch"} <= labels
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case) -> None:
                case.call_and_validate()

            try:
                check()
            except Exception as exc:  # noqa: BLE001 - collected: one report for every operation
                failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
