"""Machine providers behind one interface (scaler.providers.base.Provider)."""

from __future__ import annotations

from app.settings import Settings
from scaler.providers.base import Provider, ProviderError


def make_provider(settings: Settings) -> Provider:
    """The provider named by STEMFLEET_PROVIDER."""
    if settings.provider == "fly":
        from scaler.providers.fly import FlyProvider

        return FlyProvider(settings)
    from scaler.providers.local import LocalProvider

    return LocalProvider(settings)


__all__ = ["Provider", "ProviderError", "make_provider"]
