"""Who is calling: Supabase JWTs (HS256 project secret, or asymmetric keys from a JWKS URL),
the service token for admin endpoints, and the embedded default's single local dev token."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
from jwt import PyJWKClient

from app.errors import StemfleetError
from app.settings import Settings, reveal

# The one user of the embedded default (dev auth): a fixed id so jobs survive restarts.
DEV_USER_ID = UUID("00000000-0000-4000-8000-000000000001")

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LEEWAY_SECONDS = 30  # clock skew tolerated on exp / nbf / iat


class AuthError(StemfleetError):
    """Missing or invalid credentials (HTTP 401)."""


class Forbidden(StemfleetError):
    """Valid credentials without the right to this endpoint (HTTP 403)."""


class AuthUnavailable(StemfleetError):
    """The signing keys could not be fetched (HTTP 503)."""


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path` (mode 0600), created with `make()` the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def dev_token_path(settings: Settings) -> Path:
    return settings.data_dir / "dev-token"


def ensure_dev_token(settings: Settings) -> str:
    """STEMFLEET_DEV_TOKEN, or a generated token kept in <data_dir>/dev-token so local tools
    (and restarts) find the same one."""
    if settings.dev_token:
        return settings.dev_token.get_secret_value()
    return secret_file(dev_token_path(settings), lambda: "sfdev_" + secrets.token_urlsafe(24))


class Authenticator:
    def __init__(self, settings: Settings, *, dev_token: str | None = None) -> None:
        self.audience = settings.jwt_audience
        self.jwt_secret = reveal(settings.jwt_secret)
        self.service_token = reveal(settings.service_token)
        self.dev_token = dev_token if settings.dev_auth else None
        self.jwks = PyJWKClient(settings.jwks_url, lifespan=300) if settings.jwks_url else None

    def user(self, token: str | None) -> UUID:
        """The user id (`sub`) a bearer token stands for; raises AuthError with the reason."""
        if not token:
            raise AuthError(
                "missing credentials: send `Authorization: Bearer <token>` with a Supabase "
                "access token" + (" or the local dev token" if self.dev_token else "")
            )
        if self.dev_token and hmac.compare_digest(token.encode(), self.dev_token.encode()):
            return DEV_USER_ID
        if not self.jwt_secret and not self.jwks:
            raise AuthError(
                "this server accepts no user tokens: the operator must set STEMFLEET_JWT_SECRET "
                "or STEMFLEET_JWKS_URL (or STEMFLEET_DEV_AUTH for local use)"
            )
        claims = self._decode(token)
        try:
            return UUID(str(claims["sub"]))
        except ValueError:
            raise AuthError("the token's subject (sub) is not a user id") from None

    def _key(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("the bearer token is not a valid JWT") from None
        algorithm = str(header.get("alg", ""))
        if algorithm == "HS256":
            if not self.jwt_secret:
                raise AuthError("HS256 tokens are not accepted here (no project secret set)")
            return self.jwt_secret, algorithm
        if algorithm in ASYMMETRIC_ALGORITHMS:
            if self.jwks is None:
                raise AuthError(f"{algorithm} tokens are not accepted here (no JWKS URL set)")
            try:
                return self.jwks.get_signing_key_from_jwt(token).key, algorithm
            except jwt.PyJWKClientConnectionError as exc:
                raise AuthUnavailable(f"the signing keys could not be fetched: {exc}") from None
            except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
                raise AuthError(f"no signing key for this token: {exc}") from None
        raise AuthError(f"unsupported token algorithm {algorithm!r}")

    def _decode(self, token: str) -> dict[str, Any]:
        key, algorithm = self._key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired: sign in again or refresh it") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"the token's audience is not {self.audience!r}") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return claims

    def admin(self, token: str | None) -> None:
        """Admin endpoints take the service token (or, in dev mode without one, the dev
        token); raises AuthError / Forbidden."""
        if not token:
            raise AuthError("missing credentials: send `Authorization: Bearer <service token>`")
        accepted = self.service_token or self.dev_token
        if not accepted:
            raise Forbidden("admin endpoints are disabled: set STEMFLEET_SERVICE_TOKEN")
        if not hmac.compare_digest(token.encode(), accepted.encode()):
            raise Forbidden("admin endpoints need the service token (STEMFLEET_SERVICE_TOKEN)")
