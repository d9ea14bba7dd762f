"""The operator's configuration: a pydantic schema loaded from YAML, `${NAME}` from the environment.

Every key has a default, so an empty file (or none) is valid; unknown keys are rejected, and
every error names its key path and the line it stands on.
"""

from __future__ import annotations

import os
import re
from datetime import time as dt_time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from gateway.message import Reason

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


Seconds = Annotated[float, Field(gt=0)]


class ServerConfig(Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    api_token: SecretStr | None = Field(
        default_factory=lambda: SecretStr(token) if (token := _env("GATEWAY_API_TOKEN")) else None,
        description="Bearer token required on /api/*; unset means the API is open.",
    )
    max_message_chars: int = Field(default=4000, ge=1)


class PipelineConfig(Section):
    max_concurrency: int = Field(default=64, ge=1, description="conversations processed at once")
    dedupe_ttl: Seconds = Field(default=86_400.0, ge=86_400.0)
    conversation_ttl: Seconds = 30 * 86_400.0
    reply_timeout: Seconds = Field(default=30.0, description="how long REST waits for its answer")
    claim_idle: Seconds = Field(
        default=30.0, description="Redis: a message pending this long on a dead worker is claimed"
    )
    # Admission control (gateway/admission.py), per web process.
    max_in_flight: int = Field(
        default=200, ge=1, description="REST and web chat messages in flight; beyond: 429"
    )
    max_webhooks_in_flight: int = Field(
        default=1000, ge=1, description="webhook requests at once; beyond (a stuck bus): 503"
    )
    retry_after: Seconds = Field(default=2.0, description="what a 429 or 503 asks clients to wait")


class CrawlConfig(Section):
    """How `gateway kb crawl` and URL sources fetch a website."""

    max_pages: int = Field(default=500, ge=1, description="pages fetched per crawl at most")
    concurrency: int = Field(default=4, ge=1, le=32, description="requests in flight at once")
    timeout: Seconds = Field(default=20.0, description="per request, connect to last byte")
    user_agent: str = "support-gateway-crawler/1.0 (knowledge-base indexer; honours robots.txt)"


class KnowledgeConfig(Section):
    sources: list[str] = Field(default_factory=list)
    collection: str = "knowledge"
    chroma_url: str | None = Field(default_factory=lambda: _env("CHROMA_URL"))
    auto_ingest: bool = True
    # Chosen on benchmarks/brain_quality.py; a switch rebuilds the collection on the next ingest.
    embedder: Literal["use-multilingual", "minilm"] = "use-multilingual"
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)


class BrainMessages(Section):
    escalated: str = (
        "I've asked a member of our team to look at this. They'll reply right here, "
        "so you can keep this conversation open."
    )
    no_agents: str = (
        "No one from our team is connected to this chat right now. "
        "Please contact us by email and we'll get back to you."
    )
    low_confidence: str = "I couldn't find an answer to that in our help centre."
    empty_message: str = "I didn't catch any text there. Could you type your question?"
    error: str = "Sorry, something went wrong on our side. Please try again in a moment."
    # Said instead of an answer when the model is unavailable or a reply broke the policy.
    holding: str = "Sorry, I can't give you a reliable answer to that right now."
    # Said when a rule hands the conversation over (a reserved topic, an account action).
    handover: str = "That's something a member of our team needs to handle for you."
    # Said when the customer is upset.
    apology: str = "I'm sorry this has been frustrating."


def _compiles(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {pattern!r}: {exc}") from None
    return patterns


class TopicRule(Section):
    """A named topic recognised in customer messages by case-insensitive regexes."""

    name: str
    patterns: Annotated[list[str], AfterValidator(_compiles)]


class EscalationConfig(Section):
    """When the bot hands a conversation over rather than answer (brain/escalation.py)."""

    # Score of brain/escalation.py's multilingual lexicon (strong word 2, mild 1, shouting and
    # "!!" 1 each, each earlier upset message in the last turns 1) at which the bot hands over.
    sentiment_threshold: float = Field(default=3.0, gt=0)
    repeated_failures: int = Field(default=3, ge=1, description="failed turns in a row")
    # Topics the operator reserves for people (policy_restricted). EN, DE, ES, FR.
    restricted_topics: list[TopicRule] = Field(
        default_factory=lambda: [
            TopicRule(
                name="refunds",
                patterns=[
                    r"\b(want|like|need|demand|give me|get|expect)\b.{0,25}"
                    r"\b(refund|refunded|money back|reimburse)",
                    r"\brefund (me|my|the|this|it)\b",
                    r"\b(möchte|will|verlange|bitte)\b.{0,30}(geld zurück|rückerstattung|erstatt)",
                    r"\b(quiero|necesito|exijo)\b.{0,30}(reembols|mi dinero)",
                    r"\b(veux|voudrais|souhaite|exige)\b.{0,30}(rembours)",
                ],
            ),
            TopicRule(
                name="billing_dispute",
                patterns=[
                    r"\b(charged|billed) (me )?(twice|two times|double)\b",
                    r"\b(double|over|wrongly|incorrectly)[ -]?(charged|billed)\b",
                    r"\b(unauthori[sz]ed|fraudulent) (charge|payment|transaction)",
                    r"\b(chargeback|disput(e|ing) (a|the|this|that) (charge|payment))\b",
                    r"\bnever authori[sz]ed (this|that|the|a|any) (charge|payment)",
                    r"\bdoppelt (abgebucht|belastet|berechnet)|falsch (abgebucht|berechnet)",
                    r"\bcobrad[oa] dos veces|cobro (indebido|duplicado|no autorizado)",
                    r"\b(débité|prélevé|facturé) deux fois|prélèvement (non autorisé|en double)",
                ],
            ),
            TopicRule(
                name="legal",
                patterns=[
                    r"\b(lawyer|attorney|lawsuit|solicitor|legal action|small claims|sue you)\b",
                    r"\b(anwalt|anwältin|klage|rechtliche schritte|verklagen)\b",
                    r"\b(abogad[oa]|demanda|acciones legales|denunciar)\b",
                    r"\b(avocat|poursuites?|action en justice|mise en demeure)\b",
                ],
            ),
            TopicRule(
                name="security",
                patterns=[
                    r"\b(hacked|compromised|phishing|account takeover|stolen card)\b",
                    r"\b(security (vulnerability|hole|flaw|issue|breach)|vulnerability|"
                    r"data breach|exploit)\b",
                    r"\b(sicherheitslücke|schwachstelle|vulnerabilidad|brecha de seguridad|"
                    r"faille de sécurité|vulnérabilité)\b",
                    r"\bsomeone (else )?(logged|signed) in(to)? (to )?my\b",
                    r"\b(gehackt|kompromittiert|phishing)\b",
                    r"\b(hackead[oa]|suplantación|phishing)\b",
                    r"\b(piraté|hameçonnage|usurpation)\b",
                ],
            ),
        ]
    )
    # Things done on a customer's account that the bot cannot do (account_action): requests
    # to act, not how-to questions ("how do I cancel?" is answered from the knowledge base).
    account_actions: list[TopicRule] = Field(
        default_factory=lambda: [
            TopicRule(
                name="account_change",
                patterns=[
                    r"\b(can|could|would|will) you (please )?(cancel|delete|close|remove|change|"
                    r"update|upgrade|downgrade|pause|reactivate|unlock|merge|extend|transfer)\b",
                    r"^\s*(please )?(cancel|delete|close|change|update|pause|unlock) my\b",
                    r"\b(i want|i'd like|i need) you to "
                    r"(cancel|delete|close|change|update|pause)\b",
                    r"\b(delete|close|erase) my (account|data|profile)\b",
                    r"^\s*(please )?(change|transfer) (the )?(owner|ownership)\b",
                    r"\b(können|könnten) sie\b.{0,40}\b(kündigen|löschen|ändern|stornieren)\b",
                    r"\bbitte\b.{0,30}\b(kündigen|löschen|ändern|stornieren)\b",
                    r"\b(puede|podría|pueden|podrían)n?\b.{0,20}\b(cancelar|eliminar|borrar|"
                    r"cambiar)\b",
                    r"\b(cancela|elimina|borra|cambia)d? mi\b",
                    r"\b(pouvez|pourriez)[- ]vous\b.{0,20}\b(annuler|supprimer|résilier|changer|"
                    r"modifier)\b",
                    r"\b(annulez|supprimez|résiliez|changez|modifiez) mon\b",
                ],
            ),
        ]
    )


class PolicyRule(Section):
    """A claim the bot must never make; `pattern` is a case-insensitive regex."""

    name: str
    pattern: Annotated[str, AfterValidator(lambda p: _compiles([p])[0])]
    why: str = ""


class PolicyConfig(Section):
    """What no outgoing bot text may say (brain/policy.py checks every one before it is sent)."""

    rules: list[PolicyRule] = Field(
        default_factory=lambda: [
            PolicyRule(
                name="coupon_code",
                # a code-like token (capitals and digits) offered as a code
                pattern=r"\b(code|coupon|voucher)\b\W{0,4}(?-i:[A-Z][A-Z0-9]*\d[A-Z0-9]*)\b",
                why="no invented discount or coupon codes",
            ),
            PolicyRule(
                name="discount_offer",
                pattern=r"\b(i|we)('ll| will| can| could| have| 've| am| are)?\s+(giving|give|"
                r"offer|offering|apply|applying|add|adding)\b.{0,40}\b(discount|coupon|voucher|"
                r"\d+\s?% off|credit)\b",
                why="no discounts the bot cannot grant",
            ),
            PolicyRule(
                name="refund_promise",
                pattern=r"\b(i|we)('ll| will| have| 've| can| am| are)?\s+(refund|refunding|"
                r"reimburse|issue (you )?a refund|issued (you )?a refund)\b|\byour refund "
                r"(has been|is|was) (approved|processed|issued|on its way)\b",
                why="no promises of refunds; only the support team decides",
            ),
            PolicyRule(
                name="approval",
                # the customer's case declared approved; "if the claim is approved" is policy
                pattern=r"\byour\b[^.!?]{0,40}\b(is|has been|was|got)\s+(now\s+)?approved\b|"
                r"\bi('ve| have)\s+(just\s+)?approved\b|\bi approve\b",
                why="the bot approves nothing",
            ),
            PolicyRule(
                name="claims_human",
                pattern=r"\bi('m| am)\s+(a\s+)?(real\s+|human\s+|live\s+)?(human|person|"
                r"(support )?agent|member of (the|our) (support )?team)\b|"
                r"\bich bin ein(e)? (mensch|mitarbeiter)|\bsoy una? (persona|humano|agente)\b|"
                r"\bje suis une? (humain|vraie personne|conseill)",
                why="never claim to be a person",
            ),
            PolicyRule(
                name="legal_advice",
                pattern=r"\b(you should|you could|you can|i (advise|recommend))\s+(sue|take "
                r"legal action|file a (lawsuit|claim|complaint in court))\b|\blegal advice\s*:",
                why="no legal advice",
            ),
        ]
    )


class BrainConfig(Section):
    # The use-multilingual embedder on the sample help centre: in-domain questions (English,
    # German, Spanish, French) score >= 0.337, off-topic ones <= 0.270; 0.30 splits them
    # (`python benchmarks/brain_quality.py --calibrate`, benchmarks/data/calibration.yaml).
    # With `knowledge.embedder: minilm`: English questions >= 0.507, off-topic <= 0.360.
    min_confidence: float = Field(default=0.30, ge=0.0, le=1.0)
    max_passages: int = Field(default=4, ge=1, le=20)
    answer_sentences: int = Field(default=3, ge=1, le=10)
    anthropic_api_key: SecretStr | None = Field(
        default_factory=lambda: SecretStr(key) if (key := _env("ANTHROPIC_API_KEY")) else None
    )
    anthropic_base_url: str | None = Field(default_factory=lambda: _env("ANTHROPIC_BASE_URL"))
    model: str = "claude-haiku-4-5"
    max_tokens: int = Field(default=400, ge=64, le=4096)
    history_turns: int = Field(default=6, ge=0, le=50, description="earlier entries as context")
    deadline: Seconds = Field(default=2.0, description="receipt to reply: retrieval + model call")
    reserve: Seconds = Field(default=0.15, description="kept from the deadline to fall back, send")
    retry_min_time: Seconds = Field(
        default=1.0, description="a failed model call is retried only if this much time is left"
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    model_min_confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="a model answer below this escalates"
    )
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    messages: BrainMessages = Field(default_factory=BrainMessages)


class ChannelToggle(Section):
    enabled: bool = True


class WebchatConfig(ChannelToggle):
    title: str = "Support"


def _secret(name: str) -> SecretStr | None:
    return SecretStr(value) if (value := _env(name)) else None


# Telegram's rule for setWebhook's secret_token: https://core.telegram.org/bots/api#setwebhook
_TELEGRAM_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class TelegramConfig(Section):
    enabled: bool = False
    bot_token: SecretStr | None = Field(default_factory=lambda: _secret("TELEGRAM_BOT_TOKEN"))
    # webhook: Telegram POSTs updates to /telegram/webhook on the web process.
    # polling: the connectors process long-polls getUpdates (no public URL needed).
    mode: Literal["webhook", "polling"] = "webhook"
    webhook_secret: SecretStr | None = Field(
        default_factory=lambda: _secret("TELEGRAM_WEBHOOK_SECRET")
    )
    api_url: str = "https://api.telegram.org"
    bot_username: str | None = Field(default=None, description="default: asked once with getMe")

    @model_validator(mode="after")
    def _usable(self) -> TelegramConfig:
        if not self.enabled:
            return self
        if self.bot_token is None:
            raise ValueError("bot_token is required when enabled (set TELEGRAM_BOT_TOKEN)")
        bot_id, _, rest = self.bot_token.get_secret_value().partition(":")
        if not bot_id.isdigit() or not rest or any(char.isspace() for char in rest):
            raise ValueError(
                "bot_token is not a Telegram bot token (<bot id>:<secret> from @BotFather)"
            )
        if self.mode == "webhook":
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if not _TELEGRAM_SECRET.match(secret):
                raise ValueError(
                    "webhook_secret is required in webhook mode: 1-256 characters of A-Z, a-z, "
                    "0-9, _ and - (set TELEGRAM_WEBHOOK_SECRET)"
                )
        return self


class DiscordConfig(Section):
    enabled: bool = False
    bot_token: SecretStr | None = Field(default_factory=lambda: _secret("DISCORD_BOT_TOKEN"))
    api_url: str = "https://discord.com/api/v10"
    watchdog_seconds: Seconds = Field(
        default=900.0, description="no gateway event for this long: force a reconnect (resume)"
    )

    @model_validator(mode="after")
    def _usable(self) -> DiscordConfig:
        if self.enabled and self.bot_token is None:
            raise ValueError("bot_token is required when enabled (set DISCORD_BOT_TOKEN)")
        return self


class TwilioChannelConfig(Section):
    """What `sms` and `whatsapp` share: each section stands alone, credentials from the env."""

    enabled: bool = False
    account_sid: str | None = Field(default_factory=lambda: _env("TWILIO_ACCOUNT_SID"))
    auth_token: SecretStr | None = Field(default_factory=lambda: _secret("TWILIO_AUTH_TOKEN"))
    api_url: str = "https://api.twilio.com"
    public_url: str | None = Field(
        default=None,
        description="scheme and host Twilio calls (https://support.example.com); webhook "
        "signatures are checked against it, not against the URL a proxy forwards",
    )
    from_number: str | None = Field(default=None, description="E.164 sender, e.g. +14155550100")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    timeout: Seconds = Field(default=15.0, description="per REST request")
    send_attempts: int = Field(default=4, ge=1, le=10, description="tries when Twilio says 429")

    @model_validator(mode="after")
    def _usable(self) -> TwilioChannelConfig:
        if not self.enabled:
            return self
        if not self.account_sid or self.auth_token is None:
            raise ValueError(
                "account_sid and auth_token are required when enabled "
                "(set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
            )
        if not self.public_url or not self.public_url.startswith(("https://", "http://")):
            raise ValueError("public_url is required when enabled: the URL Twilio calls, https://…")
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("from_number or messaging_service_sid is required when enabled")
        return self


class SmsConfig(TwilioChannelConfig):
    max_segments: int = Field(
        default=3, ge=1, le=10, description="SMS segments per message; longer replies are split"
    )


class WhatsappTemplate(Section):
    """The approved template sent when the 24-hour customer-service window is closed."""

    content_sid: str = Field(pattern=r"^HX[0-9a-fA-F]{32}$")
    # Template variable -> value; a value may use {name} (the customer's WhatsApp profile name),
    # {agent} (who replied) and {text} (the reply).
    content_variables: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_fields(self) -> WhatsappTemplate:
        for variable, value in self.content_variables.items():
            try:
                value.format(name="", agent="", text="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"content_variables.{variable}: use only {{name}}, {{agent}} and {{text}} "
                    f"({type(exc).__name__}: {exc})"
                ) from None
        return self


class WhatsappConfig(TwilioChannelConfig):
    template: WhatsappTemplate | None = None


class ImapConfig(Section):
    """The mailbox the connectors process reads (IDLE when the server has it, else polling)."""

    host: str
    port: int = Field(default=993, ge=1, le=65535)
    # Implicit TLS (IMAPS, 993); aioimaplib has no STARTTLS, so `false` is plaintext (loopback).
    tls: bool = True
    user: str
    password: SecretStr | None = Field(default_factory=lambda: _secret("EMAIL_IMAP_PASSWORD"))
    folder: str = "INBOX"
    poll_interval: Seconds = Field(default=60.0, description="when the server has no IDLE")
    timeout: Seconds = Field(default=30.0, description="per IMAP command")


class SmtpConfig(Section):
    """Where replies are sent."""

    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "tls", "none"] = "starttls"  # tls: implicit TLS (usually 465)
    user: str | None = None
    password: SecretStr | None = Field(default_factory=lambda: _secret("EMAIL_SMTP_PASSWORD"))
    timeout: Seconds = Field(default=30.0, description="per SMTP exchange")
    send_attempts: int = Field(default=4, ge=1, le=10, description="tries on a 4xx or a drop")


class SmtpListenConfig(Section):
    """Direct delivery: an SMTP server in the connectors process (behind your MX)."""

    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=1, le=65535)
    max_size: int = Field(default=10_000_000, ge=1024, description="bytes per message")


class EmailConfig(Section):
    enabled: bool = False
    from_address: str | None = Field(default=None, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    from_name: str | None = None
    imap: ImapConfig | None = None  # unset: no mailbox is read
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    smtp_listen: SmtpListenConfig | None = None  # unset: no SMTP listener
    # Loop protection on top of the auto-reply headers (RFC 3834 §2): bot replies per sender.
    max_replies_per_sender: int = Field(default=10, ge=1)
    reply_window: Seconds = Field(default=3600.0, description="seconds the reply count covers")
    # Languages whose "On ... wrote:" / "Sent from my ..." lines mark quoted history
    # (mail-parser-reply's codes: en, de, fr, es, it, nl, pl, sv, da, cs, ja, ko, zh).
    quote_languages: list[str] = Field(default_factory=lambda: ["en", "de", "fr", "es"])

    @model_validator(mode="after")
    def _usable(self) -> EmailConfig:
        if self.enabled and not self.from_address:
            raise ValueError("from_address is required when enabled")
        if self.imap is not None and self.imap.password is None:
            raise ValueError("imap.password is required (set EMAIL_IMAP_PASSWORD)")
        return self


class SlackConfig(Section):
    """Slack: customers by DM or @mention, and (with a bot token) the agents' console."""

    enabled: bool = False
    # events: Slack POSTs events and button presses to /slack/events on the web process.
    # socket: the connectors process holds a Socket Mode websocket (no public URL needed).
    mode: Literal["events", "socket"] = "events"
    bot_token: SecretStr | None = Field(default_factory=lambda: _secret("SLACK_BOT_TOKEN"))
    signing_secret: SecretStr | None = Field(
        default_factory=lambda: _secret("SLACK_SIGNING_SECRET")
    )
    app_token: SecretStr | None = Field(default_factory=lambda: _secret("SLACK_APP_TOKEN"))
    api_url: str = Field(default="https://slack.com/api/", description="the Web API base URL")

    @model_validator(mode="after")
    def _usable(self) -> SlackConfig:
        if not self.enabled:
            return self
        if self.bot_token is None:
            raise ValueError("bot_token is required when enabled (set SLACK_BOT_TOKEN)")
        if self.mode == "events" and self.signing_secret is None:
            raise ValueError("signing_secret is required in events mode (set SLACK_SIGNING_SECRET)")
        if self.mode == "socket" and self.app_token is None:
            raise ValueError("app_token is required in socket mode (set SLACK_APP_TOKEN)")
        return self


class ChannelsConfig(Section):
    rest: ChannelToggle = Field(default_factory=ChannelToggle)
    webchat: WebchatConfig = Field(default_factory=WebchatConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    discord: DiscordConfig = Field(default_factory=DiscordConfig)
    sms: SmsConfig = Field(default_factory=SmsConfig)
    whatsapp: WhatsappConfig = Field(default_factory=WhatsappConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class BusinessHours(Section):
    """When agents are at work; outside these hours a customer is told when they are back."""

    days: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])
    start: dt_time = dt_time(9, 0)
    end: dt_time = dt_time(17, 0)
    timezone: str = Field(default="UTC", description="an IANA time zone, e.g. Europe/London")

    @model_validator(mode="after")
    def _usable(self) -> BusinessHours:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
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


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class GatewayConfig(Section):
    data_dir: Path = Field(default_factory=lambda: Path(_env("GATEWAY_DATA_DIR") or "data"))
    redis_url: str | None = Field(default_factory=lambda: _env("REDIS_URL"))
    server: ServerConfig = Field(default_factory=ServerConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    brain: BrainConfig = Field(default_factory=BrainConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _agents_can_answer(self) -> GatewayConfig:
        """An escalation channel without the Slack app would post cards nobody can answer:
        agents' replies and button presses reach the gateway through the app's events."""
        slack = self.channels.slack
        if self.handoff.escalation_channel and slack.bot_token and not slack.enabled:
            raise ValueError(
                "handoff.escalation_channel is set, so channels.slack.enabled must be true: "
                "agents' replies and buttons arrive through the Slack app"
            )
        return self


class ConfigError(Exception):
    """A config file that cannot be used; the message names every bad key path and line."""


def load_config(path: Path | None = None) -> GatewayConfig:
    """Load `path`, or `$GATEWAY_CONFIG`, or `config/gateway.yaml` when it exists, else defaults.

    Relative knowledge sources are resolved against the config file's folder. `PORT` in the
    environment wins over the file (platforms such as Heroku assign it).
    """
    if path is None:
        env_path = _env("GATEWAY_CONFIG")
        path = Path(env_path) if env_path else DEFAULT_CONFIG_PATH
        if env_path is None and not path.exists():
            return _apply_port(GatewayConfig())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    config = parse_config(text, name=str(path))
    base = path.parent
    sources = [_resolve_source(source, base) for source in config.knowledge.sources]
    config = config.model_copy(
        update={"knowledge": config.knowledge.model_copy(update={"sources": sources})}
    )
    return _apply_port(config)


def parse_config(text: str, *, name: str = "gateway.yaml") -> GatewayConfig:
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
        return GatewayConfig.model_validate(_drop_nulls(_substitute_env(raw)))
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


def _substitute_env(value: Any) -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in strings; an unset lone reference becomes None."""
    if isinstance(value, dict):
        return {key: _substitute_env(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute_env(item) for item in value]
    if not isinstance(value, str):
        return value
    whole = _ENV_REFERENCE.fullmatch(value)
    if whole and _env(whole.group(1)) is None and whole.group(2) is None:
        return None
    return _ENV_REFERENCE.sub(lambda match: _env(match.group(1)) or match.group(2) or "", value)


def _drop_nulls(value: Any) -> Any:
    """A null (or unset `${NAME}`) means "use the default", so the key is left out."""
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    return value


def _resolve_source(source: str, base: Path) -> str:
    if "://" in source or Path(source).is_absolute():
        return source
    return str((base / source).resolve())


def _apply_port(config: GatewayConfig) -> GatewayConfig:
    port = _env("PORT")
    if port is None:
        return config
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"PORT: must be a TCP port number, got {port!r}")
    return config.model_copy(
        update={"server": config.server.model_copy(update={"port": int(port)})}
    )
