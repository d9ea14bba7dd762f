"""Channel adapters: one module per channel, each registered under its config key."""

from adapters import rest, webchat

__all__ = ["rest", "webchat"]
