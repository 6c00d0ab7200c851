"""Authentication: Supabase HS256 and JWKS (RS256 / ES256) tokens, the dev token, the service
token, and one user never reaching another's jobs."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from app.api.auth import DEV_USER_ID, dev_token_path
from app.db import connect
from app.pgserver import free_port
from app.queue import Queue
from tests.api_support import (
    ADMIN,
    JWT_SECRET,
    USER_A,
    USER_B,
    api_client,
    api_settings,
    bearer,
    token,
)


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        yield client


def _message(response: Any) -> str:
    return str(response.json()["error"]["message"])


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing credentials"),
        ({"Authorization": "Bearer not.a.jwt"}, "not a valid JWT"),
        (bearer(USER_A, expires_in=-3600), "expired"),
        (bearer(USER_A, secret="another-secret-of-a-different-project-1234"), "signature"),
        (bearer(USER_A, audience="anon"), "audience"),
        (bearer("service"), "not a user id"),
        (
            {
                "Authorization": "Bearer "
                + jwt.encode({"sub": str(USER_A), "aud": "authenticated"}, JWT_SECRET)
            },
            "'exp'",
        ),
    ],
)
def test_bad_tokens_are_401_with_the_reason(
    client: TestClient, headers: dict[str, str], reason: str
) -> None:
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert reason in _message(response)


def test_a_user_never_sees_or_cancels_another_users_job(client: TestClient, db_url: str) -> None:
    with connect(db_url) as conn:
        job, _ = Queue().enqueue(conn, user_id=USER_A, input_key=f"inputs/{USER_A}/x/a.wav")
    a, b = bearer(USER_A), bearer(USER_B)
    assert client.get(f"/v1/jobs/{job.id}", headers=a).status_code == 200

    assert client.get(f"/v1/jobs/{job.id}", headers=b).status_code == 404
    assert client.post(f"/v1/jobs/{job.id}/cancel", headers=b).status_code == 404
    assert client.get(f"/v1/jobs/{job.id}/events", headers=b).status_code == 404
    assert client.get("/v1/jobs", headers=b).json()["jobs"] == []
    # B's failed cancel changed nothing
    assert client.get(f"/v1/jobs/{job.id}", headers=a).json()["status"] == "queued"


class _JwksServer:
    def __init__(self, keys: list[dict[str, Any]]) -> None:
        body = json.dumps({"keys": keys}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth/v1/.well-known/jwks.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(public_key))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def test_jwks_keys_rs256_and_es256(db_url: str, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    server = _JwksServer(
        [_jwk(rsa_key.public_key(), "rsa-1", "RS256"), _jwk(ec_key.public_key(), "ec-1", "ES256")]
    )
    try:
        settings = api_settings(db_url, tmp_path, jwt_secret=None, jwks_url=server.url)
        with api_client(settings) as (client, _app):

            def call(key: Any, alg: str, kid: str, **kwargs: Any) -> int:
                signed = token(USER_A, secret=key, algorithm=alg, headers={"kid": kid}, **kwargs)
                response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {signed}"})
                return response.status_code

            assert call(rsa_key, "RS256", "rsa-1") == 200
            assert call(ec_key, "ES256", "ec-1") == 200
            assert call(stranger, "ES256", "ec-1") == 401  # right kid, wrong key
            assert call(ec_key, "ES256", "unknown-kid") == 401
            assert call(ec_key, "ES256", "ec-1", audience="somebody-else") == 401
            assert call(rsa_key, "RS256", "rsa-1", expires_in=-120) == 401
            # no HS256 secret configured: a symmetric token is refused, not trusted
            assert client.get("/v1/jobs", headers=bearer(USER_A)).status_code == 401
    finally:
        server.close()


def test_dev_token_maps_to_the_dev_user_and_is_kept(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path, dev_auth=True, jwt_secret=None, service_token=None)
    with api_client(settings) as (client, app):
        dev = app.state.dev_token
        assert dev and dev_token_path(settings).read_text() == dev
        headers = {"Authorization": f"Bearer {dev}"}
        with connect(settings.require_database_url()) as conn:
            job, _ = Queue().enqueue(
                conn, user_id=DEV_USER_ID, input_key=f"inputs/{DEV_USER_ID}/x/a.wav"
            )
        assert client.get(f"/v1/jobs/{job.id}", headers=headers).status_code == 200
        # without a service token the dev token is the operator's too
        assert client.get("/v1/admin/queue", headers=headers).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    # a restart finds the same token
    with api_client(settings) as (_client, app):
        assert app.state.dev_token == dev


def test_admin_endpoints_need_the_service_token(client: TestClient) -> None:
    assert client.get("/v1/admin/workers").status_code == 401
    user = client.get("/v1/admin/workers", headers=bearer(USER_A))
    assert user.status_code == 403
    assert "service token" in _message(user)
    assert client.get("/v1/admin/workers", headers=ADMIN).status_code == 200


def test_the_service_token_is_not_a_user(client: TestClient) -> None:
    response = client.get("/v1/jobs", headers=ADMIN)
    assert response.status_code == 401


def test_events_accept_the_token_as_a_query_parameter(client: TestClient, db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue()
        job, _ = queue.enqueue(conn, user_id=USER_A, input_key=f"inputs/{USER_A}/x/a.wav")
        queue.cancel(conn, job.id)
    response = client.get(f"/v1/jobs/{job.id}/events", params={"access_token": token(USER_A)})
    assert response.status_code == 200
    assert '"status":"cancelled"' in response.text.replace(" ", "")
    unknown = client.get(f"/v1/jobs/{uuid.uuid4()}/events", params={"access_token": token(USER_A)})
    assert unknown.status_code == 404


def test_an_unreachable_key_server_is_503_not_401(db_url: str, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/jwks.json"
    settings = api_settings(db_url, tmp_path, jwt_secret=None, jwks_url=closed)
    key = ec.generate_private_key(ec.SECP256R1())
    signed = token(USER_A, secret=key, algorithm="ES256", headers={"kid": "k"})
    with api_client(settings) as (client, _app):
        response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {signed}"})
    assert response.status_code == 503
    assert "signing keys could not be fetched" in _message(response)
