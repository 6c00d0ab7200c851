"""The browser pages the API serves: the user's page at `/`, the operator's at `/admin`, and
the OpenAPI UI at `/docs`, all from files in this package (no build step, no CDN): the pages'
shared layout and each one's <main> in `pages/`, their scripts, styles and icon in `static/`."""

from pathlib import Path

PAGES_DIR = Path(__file__).parent / "pages"
STATIC_DIR = Path(__file__).parent / "static"
