"""`stemfleet api`: serve the HTTP API with uvicorn (registered through the entry point group
`stemfleet.commands`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.auth import dev_token_path, ensure_dev_token
    from app.api.main import create_app
    from app.api.webhooks import ensure_webhook_secret, webhook_secret_path
    from app.settings import get_settings

    settings = get_settings()
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["api_host"] = args.host
    if args.port:
        overrides["api_port"] = args.port
    if overrides:
        settings = settings.model_copy(update=overrides)
    settings.require_database_url()
    base = f"http://{settings.api_host}:{settings.api_port}"
    print(f"stemfleet API on {base} (docs: {base}/docs)", file=sys.stderr)
    if settings.dev_auth:
        token = ensure_dev_token(settings)
        where = "" if settings.dev_token else f" (kept in {dev_token_path(settings)})"
        print(f"dev auth: use `Authorization: Bearer {token}`{where}", file=sys.stderr)
        if not settings.webhook_secret and ensure_webhook_secret(settings):
            print(f"webhook secret in {webhook_secret_path(settings)}", file=sys.stderr)
    app = create_app(settings, run_dispatcher=not args.no_webhooks)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # its records go to our handler (app.log): JSON lines like ours
        proxy_headers=True,
    )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "api",
        help="serve the HTTP API (uploads, jobs, live status, stems, webhooks)",
        description="Serve the HTTP API on STEMFLEET_API_HOST:STEMFLEET_API_PORT. With "
        "STEMFLEET_DEV_AUTH=1 it prints the local token to use.",
    )
    parser.add_argument("--host", help="listen address (default: STEMFLEET_API_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default: STEMFLEET_API_PORT)")
    parser.add_argument(
        "--no-webhooks",
        action="store_true",
        help="do not run the webhook dispatcher in this process (another one does)",
    )
    parser.set_defaults(handler=_serve)
