"""Machine providers behind one interface (scaler.providers.base.Provider), registered by name.

`STEMFLEET_PROVIDER` names one of `registered()`. A provider is a class (or any factory) taking
the Settings; it is imported only when chosen, so a provider's own dependencies and settings
matter only where it is used. To add one: write `scaler/providers/<name>.py` with a class that
implements `Provider`, and add its "module:attribute" to `_BUILTIN` (or call
`register(name, factory)` from a plugin).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from app.errors import ConfigError
from app.settings import Settings
from scaler.providers.base import Price, Provider, ProviderError

Factory = Callable[[Settings], Provider]

_BUILTIN: dict[str, str] = {
    "local": "scaler.providers.local:LocalProvider",
    "fly": "scaler.providers.fly:FlyProvider",
    "runpod": "scaler.providers.runpod:RunPodProvider",
}
_REGISTERED: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Make `factory` the provider called `name` (STEMFLEET_PROVIDER=name)."""
    _REGISTERED[name] = factory


def registered() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def _factory(name: str) -> Factory:
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None:
        raise ConfigError(
            f"STEMFLEET_PROVIDER: unknown provider {name!r}; choose one of "
            + ", ".join(registered())
        )
    module, attribute = target.split(":")
    try:
        factory: Factory = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"STEMFLEET_PROVIDER: the {name} provider could not be loaded ({exc})"
        ) from exc
    return factory


def make_provider(settings: Settings) -> Provider:
    """The provider named by STEMFLEET_PROVIDER, configured from the settings (its own settings
    are validated here, with the variable's name in the error)."""
    return _factory(settings.provider)(settings)


__all__ = ["Price", "Provider", "ProviderError", "make_provider", "register", "registered"]
