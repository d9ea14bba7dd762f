"""The channels, one module each, by their key under `channels:` in `gateway.yaml`.

Written out, like Rasa's `BUILTIN_CHANNELS`: adding a channel is a module with its `Config`
and its class, a line here and a field in `gateway/app/settings.py`'s `ChannelsConfig`.
"""

from typing import Any

from adapters.base import BaseChannel
from adapters.discord_channel import DiscordChannel
from adapters.email import EmailChannel
from adapters.rest import RestChannel
from adapters.slack import SlackChannel
from adapters.telegram import TelegramChannel
from adapters.twilio import SmsChannel, WhatsappChannel
from adapters.webchat import WebchatChannel

CHANNELS: dict[str, type[BaseChannel[Any]]] = {
    channel.name: channel
    for channel in (
        RestChannel,
        WebchatChannel,
        TelegramChannel,
        DiscordChannel,
        SmsChannel,
        WhatsappChannel,
        EmailChannel,
        SlackChannel,
    )
}
