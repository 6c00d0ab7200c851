"""The browser pages the API serves: the user's page at `/`, the operator's at `/admin`, and
the OpenAPI UI at `/docs`, all from files in this package (no build step, no CDN)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
