"""The scenario file: conversations, and what the gateway must do on their turns.

```yaml
cases:
  - name: refund-after-damage             # unique across the files of one run
    channel: sms                          # optional, default rest; a turn may name its own
    turns:
      - "My grinder arrived broken"       # a bare string: a turn on the case's channel
      - text: "I want my money back"
        sender: "+447700900123"
        expect: {action: escalate, reason: policy_restricted}
    expect:                               # optional: about the final turn
      ...
    every_turn:                           # optional: about each turn
      not_says: ["refund approved"]
      not_calls: [start_return]           # tools this turn must not call
```

`expect` holds the checks of one turn (`Expect`); the tools it names (`calls`, `not_calls`)
must be configured ones, which `load_all` checks when the run starts. The labelled sets under
`benchmarks/data/` are scenario files too: `kind`, `language` (the customer's) and `origin`
describe a case and are reported, never checked.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gateway.message import Reason

DEFAULT_CHANNEL = "rest"
DEFAULT_SENDER = "scenario"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def regex_of(pattern: str) -> tuple[str, int] | None:
    """A pattern written `/body/` (or `/body/i`, ignoring case) as (body, flags); None for a
    plain substring, which is matched ignoring case."""
    if len(pattern) >= 2 and pattern.startswith("/"):
        if pattern.endswith("/"):
            return pattern[1:-1], 0
        if pattern.endswith("/i") and len(pattern) >= 3:
            return pattern[1:-2], re.IGNORECASE
    return None


def _compiles(pattern: str) -> str:
    if (regex := regex_of(pattern)) is not None:
        try:
            re.compile(*regex)
        except re.error as error:
            raise ValueError(f"not a valid regular expression {pattern!r}: {error}") from None
    return pattern


# Text a reply must (not) contain: a substring, or a regular expression written `/.../`.
PatternText = Annotated[str, Field(min_length=1), AfterValidator(_compiles)]
LanguageCode = Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]
ToolName = Annotated[str, Field(min_length=1)]
# brain.tools.Outcome's values: what a call came to.
CallOutcome = Literal["ok", "rejected", "invalid", "failed", "timeout", "refused"]


class ExpectedCall(_Model):
    """A call the turn made: `tool`, with at least the arguments in `with` (equal values; the
    arguments the verified identity fills count too), and its `outcome` when given."""

    tool: ToolName
    arguments: dict[str, Any] = Field(default_factory=dict, alias="with")
    outcome: CallOutcome | None = None


def _call(value: object) -> object:
    return {"tool": value} if isinstance(value, str) else value


class Expect(_Model):
    """What the gateway must do on one turn; every field given is checked, the others not.

    New kinds of check join here, with their check in `checks.CHECKS`.
    """

    action: Literal["answer", "escalate"] | None = None
    reason: Reason | None = None  # escalations: the reason code
    sources: list[str] = Field(default_factory=list)  # the reply cites at least one of these
    says: list[PatternText] = Field(default_factory=list)  # all of them are in the reply
    not_says: list[PatternText] = Field(default_factory=list)  # none of them is
    # The reply's language: a code (de, es, ...) or `customer`: the customer's language (the
    # case's `language`, else the one their turn is written in).
    language: LanguageCode | Literal["customer"] | None = None
    # Tools the turn called (a name, or {tool, with, outcome}), and tools it never called.
    calls: list[Annotated[ExpectedCall, BeforeValidator(_call)]] = Field(default_factory=list)
    not_calls: list[ToolName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.reason is not None and self.action != "escalate":
            raise ValueError("a reason goes with `action: escalate`")
        if not self.model_fields_set:
            raise ValueError("expects nothing: give action, reason, sources, says, ...")
        both = {call.tool for call in self.calls} & set(self.not_calls)
        if both:
            raise ValueError(f"{', '.join(sorted(both))}: in both calls and not_calls")
        return self

    def tools(self) -> Iterator[tuple[str, str]]:
        """Each tool named, with its key path inside this `expect`."""
        for index, call in enumerate(self.calls):
            yield f"calls[{index}].tool", call.tool
        for index, name in enumerate(self.not_calls):
            yield f"not_calls[{index}]", name


class Turn(_Model):
    text: str = Field(min_length=1)
    channel: str | None = None  # None: the case's channel
    sender: str | None = None  # None: the case's sender
    expect: Expect | None = None


def _turn(value: object) -> object:
    return {"text": value} if isinstance(value, str) else value


class Case(_Model):
    name: str = Field(min_length=1)
    turns: list[Annotated[Turn, BeforeValidator(_turn)]] = Field(min_length=1)
    expect: Expect | None = None  # about the final turn
    every_turn: Expect | None = None  # about each turn (say, an injection's `not_says`)
    channel: str = DEFAULT_CHANNEL
    sender: str = DEFAULT_SENDER
    language: LanguageCode | None = None  # the customer's language; None: English
    kind: str | None = None  # a label for the report's breakdown (email, anger, ...)
    origin: str | None = None  # where the case came from

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if any(not turn.text.strip() for turn in self.turns):
            raise ValueError("turns must not be blank")
        if self.expect is not None and self.turns[-1].expect is not None:
            raise ValueError("the final turn has an `expect` and so has the case: keep one")
        if not any(self.expectations()):
            raise ValueError("nothing to check: give the case or a turn an `expect`")
        return self

    def expectations(self) -> list[list[Expect]]:
        """Each turn's expectations: its own (the case's `expect` on the final turn), and
        `every_turn`."""
        own = [turn.expect for turn in self.turns]
        if self.expect is not None:
            own[-1] = self.expect
        return [
            [expect for expect in (mine, self.every_turn) if expect is not None] for mine in own
        ]

    def channels(self) -> set[str]:
        return {turn.channel or self.channel for turn in self.turns}

    def expects(self) -> Iterator[tuple[str, Expect]]:
        """Every `expect` written in the case, with its key path (`turns[1].expect`)."""
        for index, turn in enumerate(self.turns):
            if turn.expect is not None:
                yield f"turns[{index}].expect", turn.expect
        if self.expect is not None:
            yield "expect", self.expect
        if self.every_turn is not None:
            yield "every_turn", self.every_turn


class ScenarioFile(_Model):
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Suite:
    """The cases of one file."""

    path: Path
    cases: Sequence[Case]


class ScenarioError(Exception):
    """A scenario file that cannot be run: the message names the file and the problem."""


def load(path: Path) -> Suite:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ScenarioError(f"{path}: {error}") from None
    try:
        scenarios = ScenarioFile.model_validate(data)
    except ValidationError as error:
        raise ScenarioError(f"{path}: {_problems(error, data)}") from None
    return Suite(path, scenarios.cases)


def _problems(error: ValidationError, data: object) -> str:
    """Each problem at its key path, with the case's name: `cases[3] (refund-angry).expect...`."""
    lines = []
    for problem in error.errors(include_url=False):
        location = list(problem["loc"])
        where = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in location
        ).replace(".[", "[")
        if location[:1] == ["cases"] and len(location) > 1 and isinstance(location[1], int):
            name = _case_name(data, location[1])
            if name:
                where = where.replace(f"cases[{location[1]}]", f"cases[{location[1]}] ({name})", 1)
        lines.append(f"  {where or 'file'}: {problem['msg']}")
    return f"{len(lines)} problem(s):\n" + "\n".join(lines)


def _case_name(data: object, index: int) -> str | None:
    cases = data.get("cases") if isinstance(data, dict) else None
    if isinstance(cases, list) and index < len(cases) and isinstance(cases[index], dict):
        name = cases[index].get("name")
        return name if isinstance(name, str) else None
    return None


def collect(paths: Sequence[Path]) -> list[Path]:
    """The scenario files named, a folder's `*.yaml` and `*.yml` files (recursively, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise ScenarioError(f"{path}: no such file or folder")
    if not files:
        raise ScenarioError(f"no scenario files (*.yaml) in {', '.join(map(str, paths))}")
    return files


def load_all(
    paths: Sequence[Path], *, channels: Sequence[str], tools: Collection[str] = ()
) -> list[Suite]:
    """Every file's cases; names unique across them, channels among `channels`, the tools
    their expectations name among `tools` (the configured ones)."""
    suites = [load(path) for path in collect(paths)]
    seen: dict[str, Path] = {}
    for suite in suites:
        for index, case in enumerate(suite.cases):
            _known_tools(suite.path, index, case, tools)
            if case.name in seen:
                raise ScenarioError(
                    f"{suite.path}: case {case.name!r} is also in {seen[case.name]}"
                )
            seen[case.name] = suite.path
            unknown = sorted(case.channels() - set(channels))
            if unknown:
                raise ScenarioError(
                    f"{suite.path}: case {case.name!r}: unknown channel {', '.join(unknown)} "
                    f"(one of {', '.join(channels)})"
                )
    return suites


def _known_tools(path: Path, index: int, case: Case, tools: Collection[str]) -> None:
    """A tool name with a typo would make `not_calls` pass whatever the bot does: refused."""
    configured = f"one of {', '.join(sorted(tools))}" if tools else "no tools are configured"
    unknown = [
        f"  cases[{index}] ({case.name}).{where}.{key}: unknown tool {name!r} ({configured})"
        for where, expect in case.expects()
        for key, name in expect.tools()
        if name not in tools
    ]
    if unknown:
        raise ScenarioError(f"{path}: {len(unknown)} problem(s):\n" + "\n".join(unknown))
