"""The operator's whole configuration: the core's sections, each channel's own section (from
its file in `adapters/`) and the brain's, under one root that `gateway.yaml` fills.

`load_config` reads the file; relative knowledge sources are resolved against its folder, and
`PORT` in the environment wins over the file (platforms such as Heroku assign it).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from adapters.base import ChannelToggle
from adapters.discord_channel import DiscordConfig
from adapters.email import EmailConfig
from adapters.slack import SlackConfig
from adapters.telegram import TelegramConfig
from adapters.twilio import SmsConfig, WhatsappConfig
from adapters.webchat import WebchatConfig
from brain import procedure_config, tools
from brain.config import BrainConfig, KnowledgeConfig
from brain.procedure_config import ProcedureConfig
from brain.tools import ConnectionConfig, ToolConfig
from gateway.config import (
    ArchiveConfig,
    ConfigError,
    DigestConfig,
    HandoffConfig,
    LoggingConfig,
    PipelineConfig,
    SatisfactionConfig,
    Section,
    ServerConfig,
    env,
    read_config,
)

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")


class ChannelsConfig(Section):
    rest: ChannelToggle = Field(default_factory=ChannelToggle)
    webchat: WebchatConfig = Field(default_factory=WebchatConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    discord: DiscordConfig = Field(default_factory=DiscordConfig)
    sms: SmsConfig = Field(default_factory=SmsConfig)
    whatsapp: WhatsappConfig = Field(default_factory=WhatsappConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)


class DemoConfig(Section):
    shop: bool = Field(
        default=False, description="serve the Kettle & Crane demo shop API at /demo/shop/api"
    )


class GatewayConfig(Section):
    data_dir: Path = Field(default_factory=lambda: Path(env("GATEWAY_DATA_DIR") or "data"))
    redis_url: str | None = Field(default_factory=lambda: env("REDIS_URL"))
    server: ServerConfig = Field(default_factory=ServerConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    brain: BrainConfig = Field(default_factory=BrainConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    connections: dict[str, ConnectionConfig] = Field(default_factory=dict)
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    procedures: dict[str, ProcedureConfig] = Field(default_factory=dict)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    digest: DigestConfig = Field(default_factory=DigestConfig)
    satisfaction: SatisfactionConfig = Field(default_factory=SatisfactionConfig)

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

    @model_validator(mode="after")
    def _digest_can_be_posted(self) -> GatewayConfig:
        if not self.digest.enabled:
            return self
        if self.digest_channel is None:
            raise ValueError(
                "digest.enabled is true: set digest.channel or handoff.escalation_channel "
                "(the Slack channel it is posted to)"
            )
        if self.channels.slack.bot_token is None:
            raise ValueError("digest.enabled is true: it is posted with SLACK_BOT_TOKEN; set it")
        if not self.archive.enabled:
            raise ValueError("digest.enabled is true: its figures come from the archive")
        return self

    @property
    def drafts_dir(self) -> Path:
        """The knowledge-base drafts' review folder (`gateway kb drafts`)."""
        return self.knowledge.drafts_dir or self.data_dir / "kb-drafts"

    @property
    def digest_channel(self) -> str | None:
        """Where the weekly digest goes: its own channel, else the agents' escalation channel."""
        return self.digest.channel or self.handoff.escalation_channel

    @model_validator(mode="after")
    def _bot_asks_within_the_contact(self) -> GatewayConfig:
        """The ask after a bot answer must come before the archive assumes that answer resolved
        it and a later message starts a new contact: else the rating lands on no contact."""
        satisfaction = self.satisfaction
        if satisfaction.after_bot and satisfaction.bot_idle >= self.archive.resolution_window:
            raise ValueError("satisfaction.bot_idle must be shorter than archive.resolution_window")
        return self

    @model_validator(mode="after")
    def _references_hold(self) -> GatewayConfig:
        problems = reference_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def reference_problems(config: GatewayConfig) -> list[str]:
    """Tools on unknown connections, procedures calling unknown tools or changing unconfirmed."""
    effects = {name: tool.effect for name, tool in config.tools.items()}
    return [
        *tools.reference_problems(config.tools, config.connections),
        *procedure_config.reference_problems(config.procedures, effects),
    ]


def load_config(path: Path | None = None) -> GatewayConfig:
    """Load `path`, or `$GATEWAY_CONFIG`, or `config/gateway.yaml` when it exists, else defaults."""
    if path is None:
        env_path = env("GATEWAY_CONFIG")
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
        update={
            "knowledge": config.knowledge.model_copy(update={"sources": sources}),
            "procedures": {**config.procedures, **_procedure_files(base, config)},
        }
    )
    if problems := reference_problems(config):
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return _apply_port(config)


def _procedure_files(base: Path, config: GatewayConfig) -> dict[str, ProcedureConfig]:
    """`procedures/*.yaml` beside the config file: one procedure each, named by its stem."""
    found = {}
    for file in sorted((base / "procedures").glob("*.yaml")):
        if file.stem in config.procedures:
            raise ConfigError(f"{file}: procedure {file.stem!r} is also in procedures:")
        found[file.stem] = read_config(
            file.read_text(encoding="utf-8"), ProcedureConfig, name=str(file)
        )
    return found


def parse_config(text: str, *, name: str = "gateway.yaml") -> GatewayConfig:
    return read_config(text, GatewayConfig, name=name)


def _resolve_source(source: str, base: Path) -> str:
    if "://" in source or Path(source).is_absolute():
        return source
    return str((base / source).resolve())


def _apply_port(config: GatewayConfig) -> GatewayConfig:
    port = env("PORT")
    if port is None:
        return config
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"PORT: must be a TCP port number, got {port!r}")
    return config.model_copy(
        update={"server": config.server.model_copy(update={"port": int(port)})}
    )
