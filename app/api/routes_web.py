"""The pages: `/` (the user's), `/admin` (the operator's), their files under `/static`, the
page's configuration, and `/docs` with the OpenAPI UI's assets served from the
`fastapi-offline` package (Swagger UI 5, which reads OpenAPI 3.1) with FastAPI's
self-hosting recipe, so it works offline."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from app.api import routes_stems
from app.api.deps import Ctx
from app.params import KNOWN_MODELS
from app.web import PAGES_DIR, STATIC_DIR

DOCS_ASSETS = "/docs-assets"
SWAGGER_UI_DIR = Path(str(resources.files("fastapi_offline") / "static"))

router = APIRouter(include_in_schema=False)


class WebConfig(BaseModel):
    """What the page needs before anyone signs in."""

    dev_auth: bool = Field(description="the embedded default: the local sign-in link works")
    supabase_url: str | None = Field(description="Supabase Auth for email sign-in, if set")
    supabase_anon_key: str | None
    default_model: str
    models: list[str]
    max_upload_bytes: int
    presign_above_bytes: int = Field(description="bigger files go through a presigned PUT")


@dataclass(frozen=True)
class Page:
    """A page: the shared layout (pages/layout.html) around its own <main> (pages/<name>), with
    its title and home link, its script under /static/js, and the controls its header shows
    before Sign out."""

    name: str
    title: str
    home: str
    script: str
    nav: tuple[str, ...]


USER_PAGE = Page(
    "index.html", "stemfleet", "/", "main.js", ('<span id="who" class="muted"></span>',)
)
OPERATOR_PAGE = Page(
    "admin.html",
    "stemfleet · operator",
    "/admin",
    "admin.js",
    (
        '<span id="updated" class="muted small" aria-live="polite"></span>',
        '<button id="refresh" type="button" hidden>Refresh</button>',
    ),
)


def _page(page: Page) -> HTMLResponse:
    layout = Template((PAGES_DIR / "layout.html").read_text(encoding="utf-8"))
    html = layout.substitute(
        title=page.title,
        home=page.home,
        script=page.script,
        nav="\n      ".join(page.nav),
        main=(PAGES_DIR / page.name).read_text(encoding="utf-8").rstrip("\n"),
    )
    # no-cache: a new version of the page is picked up at the next load
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
def user_page() -> HTMLResponse:
    return _page(USER_PAGE)


@router.get("/admin", response_class=HTMLResponse)
def operator_page() -> HTMLResponse:
    return _page(OPERATOR_PAGE)


@router.get("/v1/web/config", response_model=WebConfig)
def web_config(ctx: Ctx) -> WebConfig:
    settings = ctx.settings
    # the fleet's own model first; the untrained test model only where it is the fleet's
    offered = (m for m in KNOWN_MODELS if m not in (settings.model, "demucs_unittest"))
    models = [settings.model, *offered]
    return WebConfig(
        dev_auth=settings.dev_auth,
        supabase_url=settings.supabase_url,
        supabase_anon_key=settings.supabase_anon_key,
        default_model=settings.model,
        models=models,
        max_upload_bytes=ctx.max_upload_bytes,
        presign_above_bytes=int(settings.web_presign_above_mb * 1024 * 1024),
    )


def mount_web(app: FastAPI) -> None:
    """What the pages need: the pages, their static files, the stems archive, and the offline
    /docs (create the app with docs_url=None, redoc_url=None)."""
    app.include_router(routes_stems.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_UI_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
