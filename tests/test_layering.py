"""The layering holds: the core loads no edge, every core module is under the import contract,
and the channel registry and the config's `channels:` sections name the same channels."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from adapters import CHANNELS
from adapters.base import BaseChannel
from gateway.app.settings import ChannelsConfig

ROOT = Path(__file__).parent.parent
CHANNEL_SDKS = (
    "slack_bolt",
    "slack_sdk",
    "aiogram",
    "discord",
    "twilio",
    "aioimaplib",
    "aiosmtplib",
    "aiosmtpd",
    "anthropic",
    "chromadb",
    "onnxruntime",
)


def test_the_pipeline_loads_no_channel_sdk_nor_the_brain() -> None:
    probe = "import sys, gateway.pipeline; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    top_level = {name.split(".")[0] for name in loaded}
    assert not top_level & {*CHANNEL_SDKS, "adapters", "brain"}


def test_every_core_module_is_under_the_import_contract() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    core_contract = settings["contracts"][0]
    listed = set(core_contract["source_modules"])
    core = ROOT / "gateway"
    modules = {
        f"gateway.{path.relative_to(core).parts[0].removesuffix('.py')}"
        for path in core.rglob("*.py")
        if path.relative_to(core).parts[0] not in ("app", "__init__.py")
    }
    assert modules == listed


def test_every_channel_has_its_config_section_and_no_section_lacks_a_channel() -> None:
    assert set(CHANNELS) == set(ChannelsConfig.model_fields)
    for name, channel in CHANNELS.items():
        assert channel.name == name and issubclass(channel, BaseChannel)
