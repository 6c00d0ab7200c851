"""stemfleet core: settings, database access, the queue's Python face, storage, API and CLI."""

__version__ = "0.1.0"
