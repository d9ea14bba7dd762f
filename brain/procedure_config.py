"""How a procedure is declared (`procedures:` in gateway.yaml, or one file per procedure under
`config/procedures/`): its trigger exemplars, per language, and its steps.

A step does one thing, named by its key: `ask` a slot, `call` a tool, `branch` on conditions,
`reply` from a template, or `escalate`. Conditions and tool arguments are JMESPath over
`{slots, results, identity, language}`; texts are sandboxed Jinja2 templates over the same,
given as one string or per language (`{en: ..., de: ...}`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import jmespath
import jmespath.exceptions
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, model_validator

from gateway.config import Seconds, Section, en_de
from gateway.message import Reason

# One sandbox for every template: no attribute access to Python internals, no I/O.
TEMPLATES = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)
END = "end"

Text = str | dict[str, str]  # a template, or one per language code


def _check_expression(expression: str) -> str:
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.ParseError as exc:
        raise ValueError(f"not a valid JMESPath expression {expression!r}: {exc}") from None
    return expression


def _check_text(text: Text | None) -> None:
    for template in text.values() if isinstance(text, dict) else [text] if text else []:
        try:
            TEMPLATES.parse(template)
        except TemplateSyntaxError as exc:
            raise ValueError(f"not a valid template {template!r}: {exc.message}") from None


class Branch(Section):
    when: str | None = Field(default=None, description="JMESPath; unset: always")
    goto: str = Field(description=f"a step id, or {END!r}")

    @model_validator(mode="after")
    def _usable(self) -> Branch:
        if self.when is not None:
            _check_expression(self.when)
        return self


class Step(Section):
    """Exactly one of `ask`, `call`, `branch`, `reply`, `escalate`, with that kind's options.

    `prompt` is what the customer is told: an ask's question, or the words before a hand-off.
    After a step comes the next one, or `goto`'s; past the last step the procedure ends."""

    id: str | None = None
    ask: str | None = Field(default=None, description="the slot this step fills")
    call: str | None = Field(default=None, description="the tool this step calls")
    branch: list[Branch] | None = None
    reply: Text | None = None
    escalate: Reason | None = None
    # ask
    prompt: Text | None = None
    retry: Text | None = Field(default=None, description="asked again after an invalid answer")
    type: Literal["text", "integer", "email"] = "text"
    pattern: str | None = Field(default=None, description="a regex searched in the answer")
    value: str | None = Field(default=None, description="template over the regex `match`")
    attempts: int = Field(default=3, ge=1, description="invalid answers before escalating")
    # call
    arguments: dict[str, str] = Field(
        default_factory=dict, description="tool parameter -> JMESPath over the context"
    )
    save_as: str | None = Field(default=None, description="results.<name>; default: the tool")
    confirm: Text | None = Field(default=None, description="the exact action, for a yes/no")
    # any step
    goto: str | None = Field(default=None, description="the next step when not the following")

    @model_validator(mode="after")
    def _usable(self) -> Step:
        kinds = [k for k in ("ask", "call", "branch", "reply", "escalate") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(
                "a step needs exactly one of ask, call, branch, reply, escalate"
                + (f" (it has {', '.join(kinds)})" if kinds else "")
            )
        if self.ask and self.prompt is None:
            raise ValueError("an ask step needs a prompt")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(
                    f"not a valid regular expression {self.pattern!r}: {exc}"
                ) from None
        for expression in self.arguments.values():
            _check_expression(expression)
        for text in (self.reply, self.prompt, self.retry, self.confirm, self.value):
            _check_text(text)
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("ask", "call", "branch", "reply", "escalate") if getattr(self, k))


class ProcedureConfig(Section):
    description: str = ""
    triggers: dict[str, list[str]] = Field(
        description="language code -> example requests that start it (matched by meaning)"
    )
    counter_examples: list[str] = Field(
        default_factory=list,
        description="messages that land near the triggers but are not this request (questions)",
    )
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _usable(self) -> ProcedureConfig:
        if not any(self.triggers.values()):
            raise ValueError("triggers: give at least one example request")
        ids = [step.id for step in self.steps if step.id]
        if len(ids) != len(set(ids)):
            raise ValueError("step ids must be unique")
        targets = {END, *ids}
        for number, step in enumerate(self.steps):
            gotos = [step.goto, *(branch.goto for branch in step.branch or [])]
            unknown = [goto for goto in gotos if goto is not None and goto not in targets]
            if unknown:
                raise ValueError(f"steps.{number}: goto names no step: {unknown}")
        return self


class ProcedureMessages(Section):
    """What the engine itself says, per language (the first is the fallback)."""

    abandoned: dict[str, str] = Field(
        default_factory=lambda: en_de(
            "OK, I've stopped that. Anything else I can help with?",
            "In Ordnung, ich habe das abgebrochen. Kann ich sonst noch helfen?",
        )
    )
    not_confirmed: dict[str, str] = Field(
        default_factory=lambda: en_de(
            "OK, I haven't changed anything.", "In Ordnung, ich habe nichts geändert."
        )
    )
    tool_failed: dict[str, str] = Field(
        default_factory=lambda: en_de(
            "Sorry, I couldn't reach our order system just now, so I've passed this to our team.",
            "Entschuldigung, unser Bestellsystem ist gerade nicht erreichbar. Ich habe Ihr "
            "Anliegen an unser Team weitergegeben.",
        )
    )
    gave_up: dict[str, str] = Field(
        default_factory=lambda: en_de(
            "I couldn't match that, so I've asked a member of our team to help.",
            "Das konnte ich leider nicht zuordnen; ich habe jemanden aus unserem Team gebeten, "
            "Ihnen zu helfen.",
        )
    )


class ProceduresSettings(Section):
    """How procedures start and end (`brain.procedures`)."""

    # The use-multilingual embedder, on 26 phrasings that are not among the sample exemplars:
    # the 12 requests (English, German) score 0.56-0.86 against a trigger, the 14 questions
    # land nearer a counter-example or score <= 0.47, but for "Can I cancel my subscription?"
    # (0.56, skip or pause). tests/test_procedures.py checks a few of each side.
    min_similarity: float = Field(default=0.55, ge=0.0, le=1.0)
    idle_timeout: Seconds = Field(default=1800.0, description="an unanswered procedure ends")
    messages: ProcedureMessages = Field(default_factory=ProcedureMessages)


def reference_problems(
    procedures: Mapping[str, ProcedureConfig], effects: Mapping[str, str]
) -> list[str]:
    """Calls of unknown tools, and change tools called without a confirmation text."""
    problems = []
    for name, procedure in procedures.items():
        for number, step in enumerate(procedure.steps):
            where = f"procedures.{name}.steps.{number}.call"
            if step.call is None:
                continue
            if step.call not in effects:
                problems.append(f"{where}: no tool named {step.call!r}")
            elif effects[step.call] == "change" and step.confirm is None:
                problems.append(f"{where}: {step.call} changes something, so it needs confirm")
    return problems
