"""The operator's configuration: a pydantic schema loaded from YAML, `${NAME}` from the environment.

Every key has a default, so an empty file (or none) is valid; unknown keys are rejected, and
every error names its key path and the line it stands on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

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


class KnowledgeConfig(Section):
    sources: list[str] = Field(default_factory=list)
    collection: str = "knowledge"
    chroma_url: str | None = Field(default_factory=lambda: _env("CHROMA_URL"))
    auto_ingest: bool = True


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


class BrainConfig(Section):
    # all-MiniLM-L6-v2 on the sample help centre: in-domain questions score >= 0.38, off-topic
    # ones <= 0.28 (measured with benchmarks/ingest.py and the REST tests); 0.33 splits them.
    min_confidence: float = Field(default=0.33, ge=0.0, le=1.0)
    max_passages: int = Field(default=4, ge=1, le=20)
    answer_sentences: int = Field(default=3, ge=1, le=10)
    anthropic_api_key: SecretStr | None = Field(
        default_factory=lambda: SecretStr(key) if (key := _env("ANTHROPIC_API_KEY")) else None
    )
    messages: BrainMessages = Field(default_factory=BrainMessages)


class ChannelToggle(Section):
    enabled: bool = True


class WebchatConfig(ChannelToggle):
    title: str = "Support"


class ChannelsConfig(Section):
    rest: ChannelToggle = Field(default_factory=ChannelToggle)
    webchat: WebchatConfig = Field(default_factory=WebchatConfig)


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
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


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
