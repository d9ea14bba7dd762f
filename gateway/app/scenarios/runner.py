"""Runs scenario cases through the real pipeline, in process.

The runtime is the one `gateway serve` builds from the config (store, knowledge base,
answerer, policy), with two parts swapped: a recording channel stands in for every provider,
and there is no agents' console, so an escalation is only recorded as the turn's decision.
Each run of a case is a conversation of its own, so cases never see each other's history.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from adapters import CHANNELS
from brain.knowledge import KnowledgeBase
from gateway.app.demo_shop import aimed_at, seeded_shop, serving
from gateway.app.runtime import Runtime
from gateway.app.scenarios.checks import Mismatch, Outcome, detect_language, mismatches
from gateway.app.scenarios.model import Case, Expect, Suite
from gateway.app.scenarios.recording import RecordingChannel
from gateway.app.settings import GatewayConfig
from gateway.channel import Channel, ChannelContext
from gateway.message import Inbound, conversation_key, new_id, turn_calls
from gateway.relay import Relay


class ScenarioRuntime(Runtime):
    """The configured runtime, with the recording channel under every channel's name and no
    hand-off relay."""

    recorder: RecordingChannel

    def open_channels(self, context: ChannelContext) -> dict[str, Channel]:
        self.recorder = RecordingChannel()
        return dict.fromkeys(CHANNELS, self.recorder)

    def open_relay(self) -> Relay | None:
        return None


@dataclass(frozen=True, slots=True)
class CheckedTurn:
    outcome: Outcome
    expects: tuple[Expect, ...]
    mismatches: tuple[Mismatch, ...]


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a case: each turn's outcome and checks, or the error that stopped it."""

    turns: tuple[CheckedTurn, ...]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not any(turn.mismatches for turn in self.turns)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    path: Path
    runs: tuple[Run, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        """pass^k: the case passes only if every one of its runs did."""
        return all(run.passed for run in self.runs)

    @property
    def runs_passed(self) -> int:
        return sum(run.passed for run in self.runs)

    @property
    def last(self) -> Run:
        """The run reported in detail: the first that failed, else the last one."""
        return next((run for run in self.runs if not run.passed), self.runs[-1])


class ScenarioRunner:
    def __init__(self, runtime: ScenarioRuntime) -> None:
        self._runtime = runtime

    @property
    def knowledge(self) -> KnowledgeBase:
        """The knowledge base the pipeline retrieves from (for retrieval benchmarks)."""
        return self._runtime.knowledge

    @property
    def answerer(self) -> str:
        """Which answerer decides: `offline` or `claude`."""
        return type(self._runtime.answerer).__name__.removesuffix("Answerer").lower()

    async def run(
        self,
        suites: Sequence[Suite],
        *,
        repeat: int = 1,
        concurrency: int = 4,
        on_run: Callable[[Case], None] | None = None,
    ) -> list[CaseResult]:
        """Every case `repeat` times (its runs one after the other, `concurrency` cases at
        once); `on_run` is called after each run, for progress."""
        if any(expect.language for suite in suites for expect in _expects(suite)):
            detect_language("warm up")  # loads the model now, not in the middle of a turn
        slots = asyncio.Semaphore(concurrency)

        async def run_case(case: Case, path: Path) -> CaseResult:
            async with slots:
                started = time.perf_counter()
                runs = []
                for attempt in range(repeat):
                    runs.append(await self.run_once(case, attempt))
                    if on_run is not None:
                        on_run(case)
                return CaseResult(case, path, tuple(runs), time.perf_counter() - started)

        return list(
            await asyncio.gather(
                *(run_case(case, suite.path) for suite in suites for case in suite.cases)
            )
        )

    async def run_once(self, case: Case, attempt: int = 0) -> Run:
        """The case's turns, in order, in a conversation of their own."""
        conversation = conversation_key(case.channel, f"test-{case.name}-{attempt}-{new_id()[:8]}")
        checked: list[CheckedTurn] = []
        for turn, expects in zip(case.turns, case.expectations(), strict=True):
            message = Inbound(
                channel=turn.channel or case.channel,
                conversation=conversation,
                sender=turn.sender or case.sender,
                text=turn.text,
                provider_message_id=new_id(),
            )
            try:
                result = await self._runtime.pipeline.handle(message)
            except Exception as error:  # reported as the run's failure, the others go on
                return Run(tuple(checked), error=f"turn {len(checked) + 1}: {error!r}")
            decision = result.decision
            sent = [out.text for out in self._runtime.recorder.replies_to(message.id)]
            transcript = await self._runtime.store.transcript(conversation)
            outcome = Outcome(
                text=turn.text,
                action=decision.action.value,
                reason=decision.reason.value if decision.reason else None,
                sources=tuple(source.source for source in decision.sources),
                reply="\n".join(sent),
                explanation=decision.explanation,
                confidence=decision.confidence,
                latency_ms=result.latency_ms,
                calls=tuple(turn_calls(transcript, message.id)),
            )
            found = mismatches(expects, outcome, case)
            checked.append(CheckedTurn(outcome, tuple(expects), tuple(found)))
        return Run(tuple(checked))


def _expects(suite: Suite) -> list[Expect]:
    return [expect for case in suite.cases for turn in case.expectations() for expect in turn]


@asynccontextmanager
async def open_runner(config: GatewayConfig) -> AsyncIterator[ScenarioRunner]:
    """The runner over `config`'s gateway, its knowledge base ingested when stale. With
    `demo.shop` on, the demo shop is served on a loopback port of its own for the run (no web
    role runs here to serve it), freshly seeded, and the tools call it there."""
    async with AsyncExitStack() as stack:
        if config.demo.shop:
            shop = await stack.enter_async_context(serving(seeded_shop()))
            config = config.model_copy(update={"connections": aimed_at(config.connections, shop)})
        runtime = await stack.enter_async_context(ScenarioRuntime.open(config, embedded=True))
        await runtime.ingest_if_stale()
        await runtime.knowledge.search("warm up", k=1)  # the embedding model loads here
        yield ScenarioRunner(runtime)
