"""The configuration loader and the core's sections.

The operator's file is YAML validated by a pydantic schema; `${NAME}` reads the environment.
Every key has a default, so an empty file (or none) is valid; unknown keys are rejected, and
every error names its key path and the line it stands on. The root schema is assembled in
`gateway/app/settings.py` from these sections, each channel's own `Config` and the brain's.
"""

from __future__ import annotations

import os
import re
from datetime import time as dt_time
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from gateway.message import Reason

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def env(name: str) -> str | None:
    """An environment variable; unset and empty are the same."""
    return os.environ.get(name) or None


def secret(name: str) -> SecretStr | None:
    """A secret from the environment (the only place secrets come from)."""
    return SecretStr(value) if (value := env(name)) else None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


Seconds = Annotated[float, Field(gt=0)]


class ServerConfig(Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    api_token: SecretStr | None = Field(
        default_factory=lambda: secret("GATEWAY_API_TOKEN"),
        description="Bearer token required on /api/*; unset means the API is open.",
    )
    max_message_chars: int = Field(default=4000, ge=1)
    admin_token: SecretStr | None = Field(
        default_factory=lambda: secret("GATEWAY_ADMIN_TOKEN"),
        description="Bearer token for /admin/report; unset means the page is off (404).",
    )


class PipelineConfig(Section):
    max_concurrency: int = Field(default=64, ge=1, description="conversations processed at once")
    dedupe_ttl: Seconds = Field(default=86_400.0, ge=86_400.0)
    conversation_ttl: Seconds = 30 * 86_400.0
    reply_timeout: Seconds = Field(default=30.0, description="how long REST waits for its answer")
    claim_idle: Seconds = Field(
        default=30.0, description="Redis: a message pending this long on a dead worker is claimed"
    )
    memory_max_conversations: int = Field(
        default=100_000, ge=1, description="no Redis: conversations kept; the oldest are evicted"
    )
    memory_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024 * 1024,
        description="no Redis: about this much memory for conversations; the oldest are evicted",
    )
    # Admission control (gateway/admission.py), per web process.
    max_in_flight: int = Field(
        default=200, ge=1, description="REST and web chat messages in flight; beyond: 429"
    )
    max_webhooks_in_flight: int = Field(
        default=1000, ge=1, description="webhook requests at once; beyond (a stuck bus): 503"
    )
    retry_after: Seconds = Field(default=2.0, description="what a 429 or 503 asks clients to wait")


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WORKDAYS = WEEKDAYS[:5]


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


TimeZoneName = Annotated[
    str, AfterValidator(_known_zone), Field(description="an IANA time zone, e.g. Europe/London")
]


def _clock_time(value: Any) -> Any:
    """YAML 1.1 reads an unquoted `9:30` as the number 570 (base 60), which would be a time of
    570 seconds past midnight: only a quoted time of day is taken."""
    if isinstance(value, int | float):
        raise ValueError('write the time of day in quotes, as "HH:MM" (YAML reads 9:30 as 570)')
    return value


ClockTime = Annotated[dt_time, BeforeValidator(_clock_time)]


class BusinessHours(Section):
    """When agents are at work; outside these hours a customer is told when they are back."""

    days: list[Weekday] = Field(default_factory=lambda: list(WORKDAYS))
    start: dt_time = dt_time(9, 0)
    end: dt_time = dt_time(17, 0)
    timezone: TimeZoneName = "UTC"

    @model_validator(mode="after")
    def _usable(self) -> BusinessHours:
        if not self.days:
            raise ValueError("days: name at least one day")
        if self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class HandoffRoute(Section):
    """Escalations of one customer channel and/or one reason go to another agents' channel."""

    channel: str = Field(min_length=1, description="the agents' channel id (Slack: C0...)")
    customer_channel: str | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _usable(self) -> HandoffRoute:
        if self.customer_channel is None and self.reason is None:
            raise ValueError("a route needs customer_channel, reason or both")
        return self


class HandoffMessages(Section):
    """What the customer is told; `{wait}`, `{opens}` and `{agent}` are filled in."""

    # `coming` and `after_hours` follow the bot's own words on escalating ("I've asked...").
    coming: str = "A person from our team will join you here, usually within {wait}."
    after_hours: str = "Our team is away right now and back {opens}; a person will reply then."
    reminder: str = "Thanks for waiting. A member of our team will be with you as soon as possible."
    claimed: str = "{agent} from our team is here and will reply in a moment."
    resolved: str = "{agent} marked this as solved. I'm here if you need anything else."
    handed_back: str = "You're back with our assistant. Ask away, or ask for a person again."
    timed_out: str = (
        "Sorry, no one from our team could get to you in time. Your conversation is saved and "
        "someone will follow up here as soon as they can. Meanwhile I'll try to help."
    )


class HandoffConfig(Section):
    """The human hand-off: where agents see escalations, and who is told what, when."""

    escalation_channel: str | None = Field(
        default=None, description="agents' channel id (Slack: C0...); unset: no hand-off console"
    )
    routes: list[HandoffRoute] = Field(default_factory=list)
    ping_group: str | None = Field(default=None, description="user group pinged (Slack: S0...)")
    expected_wait: Seconds = Field(default=600.0, description="the rough wait told the customer")
    reminder_interval: Seconds = 300.0
    unclaimed_ping_after: Seconds = 600.0
    timeout: Seconds = Field(default=3600.0, description="unclaimed this long: back to the bot")
    sweep_interval: Seconds = Field(default=5.0, description="how often workers look for timers")
    business_hours: BusinessHours | None = Field(default=None, description="unset: always open")
    note_prefix: str = Field(default="note:", min_length=1)
    signature: str = Field(default="{agent}: {text}", description="how an agent's reply reads")
    messages: HandoffMessages = Field(default_factory=HandoffMessages)

    @model_validator(mode="after")
    def _usable(self) -> HandoffConfig:
        if "{text}" not in self.signature:
            raise ValueError("signature must contain {text}")
        try:
            self.signature.format(agent="Dana", text="Hello")
        except (KeyError, IndexError, ValueError):
            raise ValueError("signature may name only {agent} and {text}") from None
        return self


def en_de(en: str, de: str) -> dict[str, str]:
    """A text per language, English first (the fallback), for the built-in defaults."""
    return {"en": en, "de": de}


class SatisfactionMessages(Section):
    """What the ask says, per language code; the first language is the fallback, and the
    customer's is told from what they wrote, among these."""

    question: dict[str, str] = Field(
        default_factory=lambda: en_de(
            "How would you rate the help you got, from 1 (poor) to 5 (great)?",
            "Wie bewerten Sie die Hilfe, die Sie bekommen haben, von 1 (schlecht) bis 5 "
            "(sehr gut)?",
        )
    )
    # Where the channel has no buttons (SMS, WhatsApp, an email without a rating link).
    hint: dict[str, str] = Field(
        default_factory=lambda: en_de(
            "Just reply with a number from 1 to 5.",
            "Antworten Sie einfach mit einer Zahl von 1 bis 5.",
        )
    )
    thanks: dict[str, str] = Field(
        default_factory=lambda: en_de("Thanks for your rating!", "Danke für Ihre Bewertung!")
    )

    @model_validator(mode="after")
    def _same_languages(self) -> SatisfactionMessages:
        languages = [set(self.question), set(self.hint), set(self.thanks)]
        if not languages[0] or any(found != languages[0] for found in languages):
            raise ValueError("question, hint and thanks must name the same languages")
        return self


class SatisfactionConfig(Section):
    """The satisfaction ask (gateway/satisfaction.py): once per conversation, never while a
    person has it, answered 1 to 5 on the channel's own buttons, a reply or a link."""

    enabled: bool = True
    after_agent: bool = Field(default=True, description="ask when an agent resolves")
    after_bot: bool = Field(default=True, description="ask after a bot answer met with silence")
    bot_idle: Seconds = Field(
        default=600.0,
        description="the silence after a bot answer (no escalation) that asks about it; "
        "shorter than archive.resolution_window, so the answer rates that contact",
    )
    reply_window: Seconds = Field(
        default=86_400.0, description="a reply that is just a digit 1-5 answers the ask this long"
    )
    messages: SatisfactionMessages = Field(default_factory=SatisfactionMessages)


class ArchiveConfig(Section):
    """The conversation archive (gateway/archive/) and the report's definitions."""

    enabled: bool = True
    database_url: SecretStr | None = Field(
        default_factory=lambda: secret("DATABASE_URL"),
        description="PostgreSQL (postgres://...); unset: SQLite in data_dir",
    )
    retention_days: int = Field(default=365, ge=1, description="older rows are deleted")
    resolution_window: Seconds = Field(
        default=86_400.0,
        description="a bot answer with no escalation and no further message this long after "
        "counts as an assumed resolution; a longer silence starts a new contact",
    )
    repeat_window: Seconds = Field(
        default=7 * 86_400.0, description="the same customer back on the same topic: a repeat"
    )
    batch_size: int = Field(default=500, ge=1, le=10_000)
    flush_interval: Seconds = Field(default=0.5, description="how long events gather per batch")
    max_buffered: int = Field(
        default=100_000, ge=1, description="no Redis: events kept while the database is down"
    )
    writer_process: bool = Field(
        default=True,
        description="no Redis: the archive is written by a child process (gateway/archive/"
        "child.py), off the event loop's core; false writes it in the process",
    )
    topic_similarity: float = Field(
        default=0.35,
        gt=0,
        lt=1,
        description="questions whose average cosine similarity reaches this form one topic "
        "(the report's topics)",
    )
    question_similarity: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="gaps whose questions are this alike are one question: one knowledge-base "
        "draft (stricter than a topic: one page answers one question)",
    )


class DigestConfig(Section):
    """The weekly digest (`gateway/weekly.py`): the week's figures against the week before,
    posted to the agents' Slack channel once a week, by one worker."""

    enabled: bool = False
    day: Weekday = "mon"
    at: ClockTime = Field(default=dt_time(9, 0), description='local time of day, "HH:MM"')
    timezone: TimeZoneName = "UTC"
    channel: str | None = Field(
        default=None, description="Slack channel id (C0...); unset: handoff.escalation_channel"
    )
    public_url: AnyHttpUrl | None = Field(
        default=None,
        description="the web process as agents reach it; the digest links to its /admin/report",
    )
    retry_after: Seconds = Field(
        default=300.0, description="a digest that failed (or whose worker died) is retried then"
    )
    check_interval: Seconds = Field(default=30.0, description="how often workers look for it")


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class ConfigError(Exception):
    """A config file that cannot be used; the message names every bad key path and line."""


ModelT = TypeVar("ModelT", bound=BaseModel)


def read_config(text: str, schema: type[ModelT], *, name: str = "gateway.yaml") -> ModelT:
    """Validate YAML `text` against `schema`, with `${NAME}` substituted; a `ConfigError` names
    every bad key path and its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{name}: the top level must be a mapping of keys, not {type(raw).__name__}"
        )
    try:
        return schema.model_validate(_drop_nulls(_substituteenv(raw)))
    except ValidationError as exc:
        lines = [_describe_error(error, root) for error in exc.errors()]
        raise ConfigError(f"{name}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def _describe_error(error: Any, root: yaml.Node | None) -> str:
    path = ".".join(str(part) for part in error["loc"])
    line = _line_of(root, error["loc"])
    where = f"{path} (line {line})" if line else path
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    return f"  {where}: {message}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its deepest existing parent."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((pair for pair in node.value if pair[0].value == str(part)), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _substituteenv(value: Any) -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in strings; an unset lone reference becomes None."""
    if isinstance(value, dict):
        return {key: _substituteenv(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_substituteenv(item) for item in value]
    if not isinstance(value, str):
        return value
    whole = _ENV_REFERENCE.fullmatch(value)
    if whole and env(whole.group(1)) is None and whole.group(2) is None:
        return None
    return _ENV_REFERENCE.sub(lambda match: env(match.group(1)) or match.group(2) or "", value)


def _drop_nulls(value: Any) -> Any:
    """A null (or unset `${NAME}`) means "use the default", so the key is left out."""
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    return value
