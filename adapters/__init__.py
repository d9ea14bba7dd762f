"""Channel adapters: one module per channel, each registered under its config key."""

from adapters import discord_channel, email, rest, slack, telegram, twilio, webchat

__all__ = ["discord_channel", "email", "rest", "slack", "telegram", "twilio", "webchat"]
