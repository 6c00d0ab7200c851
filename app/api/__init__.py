"""The HTTP API (FastAPI): uploads, jobs, live status, stems, signed webhooks, auth, metrics.

`app.api.main.create_app(settings)` builds it; `stemfleet api` and `uvicorn app.api.main:app`
serve it. Nothing here imports `worker` or `torch`, so the API installs without them.
"""
