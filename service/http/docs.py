"""GET /docs: Swagger UI from the package's own copy (static/swagger-ui/), never from a CDN, so
the API page renders on a machine without internet. URLs are relative, for path-prefix proxies."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse


def add_offline_docs(app: FastAPI) -> None:
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
