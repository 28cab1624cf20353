"""Scenario suite over the orchestrator: shapes, routes, streams, failures, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

from meshkit import (
    ChatRequest,
    Chunk,
    Completion,
    Context,
    Message,
    MicroService,
    NodeError,
    ServiceOrchestrator,
    ServiceType,
)
from meshkit.nodes.guardrail import Guardrail
from meshkit.nodes.llm import RemoteLLM
from meshkit.nodes.ports import Inputs, Port
from meshkit.testing import FakeLLM


class Fn(MicroService):
    """A custom node computing its output with ``fn`` and recording when it ran."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Any],
        *,
        takes: Any = None,
        gives: Any = Port.ANY,
        log: dict[str, tuple[float, float]] | None = None,
        barrier: asyncio.Barrier | None = None,
    ) -> None:
        super().__init__(name)
        self.fn = fn
        self.takes = takes
        self.gives = gives
        self.log = log if log is not None else {}
        self.barrier = barrier

    async def process(self, data: Any, ctx: Context) -> Any:
        start = time.monotonic()
        if self.barrier is not None:
            async with asyncio.timeout(10):
                await self.barrier.wait()  # passes only if the sibling runs at the same time
        out = self.fn(data)
        self.log[self.name] = (start, time.monotonic())
        return out


def chat(text: str = "hello", **kw: Any) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), **kw)


def prompt_of(data: Any) -> str:
    return data.prompt if isinstance(data, ChatRequest) else str(data)


async def run(
    graph: ServiceOrchestrator, data: Any, headers: dict[str, str] | None = None
) -> tuple[Any, Context]:
    ctx = graph.context(headers=headers or {})
    return await graph.run(data, ctx), ctx


def chain() -> ServiceOrchestrator:
    g = ServiceOrchestrator("chain")
    g.add(Fn("upper", lambda d: prompt_of(d).upper())).add(Fn("bang", lambda d: d + "!"))
    return g.flow_to("upper", "bang")


def routes(when_docs: str = "len(output) > 0") -> ServiceOrchestrator:
    g = ServiceOrchestrator("routes")
    g.add(Fn("retrieve", lambda d: tuple(w for w in prompt_of(d).split() if w != "none")))
    g.add(Fn("rerank", lambda d: tuple(sorted(d))))
    g.add(Fn("fallback", lambda d: ("nothing found",)))
    g.add(Fn("answer", lambda d: dict(d)))
    g.flow_to("retrieve", "rerank", when=when_docs)
    g.flow_to("retrieve", "fallback", when="len(output) == 0")
    g.flow_to("rerank", "answer").flow_to("fallback", "answer")
    return g


def by_request() -> ServiceOrchestrator:
    g = ServiceOrchestrator("by-request")
    g.add(Fn("entry", lambda d: d))
    g.add(Fn("big", lambda d: "big model")).add(Fn("pro", lambda d: "pro tier"))
    g.add(Fn("small", lambda d: "small model"))
    g.add(Fn("answer", lambda d: sorted(d.values())))
    g.flow_to("entry", "big", when='request.model == "big"')
    g.flow_to("entry", "pro", when='headers["X-Tier"] == "pro"')
    g.flow_to("entry", "small", when='request.model != "big" and headers["x-tier"] != "pro"')
    for n in ("big", "pro", "small"):
        g.flow_to(n, "answer")
    return g


@attrs.frozen
class Case:
    id: str
    build: Callable[[], ServiceOrchestrator]
    data: Any
    expected: Any
    path: list[str]
    skipped: list[str]
    headers: dict[str, str] = attrs.field(factory=dict)


CASES = [
    Case("chain", chain, chat("hi"), "HI!", ["upper", "bang"], []),
    Case(
        "docs-found-takes-rerank",
        routes,
        chat("b a"),
        {"rerank": ("a", "b")},
        ["retrieve", "rerank", "answer"],
        ["fallback"],
    ),
    Case(
        "no-docs-takes-fallback",
        routes,
        chat("none"),
        {"fallback": ("nothing found",)},
        ["retrieve", "fallback", "answer"],
        ["rerank"],
    ),
    Case(
        "model-routes-big",
        by_request,
        chat(model="big"),
        ["big model"],
        ["entry", "big", "answer"],
        ["pro", "small"],
    ),
    Case(
        "header-routes-pro",
        by_request,
        chat(model="x"),
        ["pro tier"],
        ["entry", "pro", "answer"],
        ["big", "small"],
        {"x-tier": "pro"},
    ),
    Case(
        "both-routes-join",
        by_request,
        chat(model="big"),
        ["big model", "pro tier"],
        ["entry", "big", "pro", "answer"],
        ["small"],
        {"X-TIER": "pro"},
    ),
    Case(
        "neither-takes-default",
        by_request,
        chat(model="x"),
        ["small model"],
        ["entry", "small", "answer"],
        ["big", "pro"],
    ),
]


class TestScenarios:
    """Table-driven: each graph shape and route gives its answer and reports its path."""

    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    async def test_case(self, case: Case) -> None:
        async with case.build() as graph:
            result, ctx = await run(graph, case.data, case.headers)
            assert result == case.expected
            assert ctx.trace == case.path
            report = graph_meta(graph, ctx)
            assert sorted(report["skipped"]) == sorted(case.skipped)

    async def test_fan_out_branches_overlap_in_time(self) -> None:
        log: dict[str, tuple[float, float]] = {}
        barrier = asyncio.Barrier(2)
        g = ServiceOrchestrator("fan")
        g.add(Fn("src", prompt_of, log=log))
        g.add(Fn("left", lambda d: d + "-L", log=log, barrier=barrier))
        g.add(Fn("right", lambda d: d + "-R", log=log, barrier=barrier))
        g.add(Fn("join", lambda d: d, log=log))
        g.flow_to("src", "left").flow_to("src", "right")
        g.flow_to("left", "join").flow_to("right", "join")
        async with g:
            result, _ = await run(g, chat("x"))
        (ls, le), (rs, re_) = log["left"], log["right"]
        assert ls < re_ and rs < le  # each started before the other ended
        assert log["join"][0] >= max(le, re_)
        assert isinstance(result, Inputs)
        assert dict(result) == {"left": "x-L", "right": "x-R"}  # fan-in keeps both

    async def test_fan_in_with_same_shaped_values_keeps_both(self) -> None:
        g = ServiceOrchestrator("merge")
        g.add(Fn("src", lambda d: {"k": 0}))
        g.add(Fn("a", lambda d: {"k": 1})).add(Fn("b", lambda d: {"k": 2}))
        g.add(Fn("join", lambda d: {name: v["k"] for name, v in d.items()}))
        g.flow_to("src", "a").flow_to("src", "b").flow_to("a", "join").flow_to("b", "join")
        async with g:
            result, _ = await run(g, chat())
        assert result == {"a": 1, "b": 2}


def graph_meta(graph: ServiceOrchestrator, ctx: Context) -> dict[str, Any]:
    return {"skipped": [n for n in graph.services if n not in ctx.trace]}


class TestReport:
    """The answer says which path ran."""

    async def test_completion_meta_has_path_and_skipped(self, fake: FakeLLM) -> None:
        g = ServiceOrchestrator("r")
        g.add(Fn("gate", lambda d: d, gives=Port.REQUEST))
        g.add(RemoteLLM("llm", endpoint=fake.url)).add(Fn("never", lambda d: d))
        g.add(Fn("final", lambda d: next(iter(d.values()))))
        g.flow_to("gate", "llm").flow_to("gate", "never", when="false")
        g.flow_to("llm", "final").flow_to("never", "final")
        async with g:
            result, _ = await run(g, chat())
        assert isinstance(result, Completion)
        assert result.text == "The sky appears blue."
        timings = result.meta.pop("node_ms")
        edges = result.meta.pop("edges")
        assert result.meta == {"path": ["gate", "llm", "final"], "skipped": ["never"]}
        assert sorted(edges) == [["gate", "llm"], ["llm", "final"]]
        assert sorted(timings) == ["final", "gate", "llm"]
        assert all(isinstance(ms, float) and ms >= 0 for ms in timings.values())


class Cancellable(MicroService):
    """Waits forever; notes that it started and that it was cancelled."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.takes = None

    async def process(self, data: Any, ctx: Context) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class Reader(MicroService):
    """Reads a stream chunk by chunk (never returns until it ends)."""

    takes = (Port.STREAM,)
    gives = Port.TEXT

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.first = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def process(self, data: Any, ctx: Context) -> str:
        parts = []
        try:
            async for chunk in data:
                parts.append(chunk.text)
                self.first.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "".join(parts)


class TestFailuresAndCancellation:
    """A failing branch fails the request by name; cancellation reaches every node."""

    async def test_failing_branch_names_the_node(self) -> None:
        g = ServiceOrchestrator("fail")
        g.add(Fn("src", prompt_of)).add(Fn("ok", str.upper))
        g.add(Fn("broken", lambda d: 1 / 0)).add(Fn("join", dict))
        g.flow_to("src", "ok").flow_to("src", "broken")
        g.flow_to("ok", "join").flow_to("broken", "join")
        async with g:
            with pytest.raises(NodeError) as err:
                await run(g, chat())
        assert err.value.node == "broken"
        assert "'broken'" in err.value.message and "division by zero" in err.value.message

    async def test_optional_branch_failure_is_tolerated_and_reported(self) -> None:
        g = ServiceOrchestrator("opt")
        g.add(Fn("src", prompt_of)).add(Fn("ok", str.upper))
        g.add(Fn("broken", lambda d: 1 / 0), optional=True)
        g.add(Fn("join", lambda d: Completion(str(dict(d)))))
        g.flow_to("src", "ok").flow_to("src", "broken")
        g.flow_to("ok", "join").flow_to("broken", "join")
        async with g:
            result, _ = await run(g, chat("hi"))
        assert result.text == "{'ok': 'HI'}"
        assert result.meta["skipped"] == ["broken"]
        assert "division by zero" in result.meta["failed"]["broken"]

    async def test_cancellation_reaches_every_running_node(self) -> None:
        fake = FakeLLM(tokens=["a", "b", "c"], hold_last=True)
        async with fake.serve() as url:
            g = ServiceOrchestrator("cancel")
            waiter = Cancellable("waiter")
            reader = Reader("reader")
            g.add(Fn("src", lambda d: d, gives=Port.REQUEST)).add(waiter)
            g.add(RemoteLLM("llm", endpoint=url)).add(reader).add(Fn("join", dict))
            g.flow_to("src", "waiter").flow_to("src", "llm").flow_to("llm", "reader")
            g.flow_to("waiter", "join").flow_to("reader", "join")
            async with g:
                task = asyncio.create_task(g.run(chat(stream=True), g.context()))
                await waiter.started.wait()
                await reader.first.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert waiter.cancelled.is_set() and reader.cancelled.is_set()
                await asyncio.wait_for(fake.cancelled.wait(), 10)
                assert g.client.connections_in_use == 0

    async def test_closing_the_result_stream_cancels_the_upstream(self) -> None:
        fake = FakeLLM(tokens=["one", " two", " three"], hold_last=True)
        async with fake.serve() as url:
            g = ServiceOrchestrator("close")
            g.add(RemoteLLM("llm", endpoint=url))
            g.add(Guardrail("guard", params={"words": ["secret"]}))
            g.flow_to("llm", "guard")
            async with g:
                stream = await g.run(chat(stream=True), g.context())
                first = await anext(stream)
                assert first.text in ("", "one")
                await stream.aclose()
                await asyncio.wait_for(fake.cancelled.wait(), 10)
                assert not fake.finished


class TestStreams:
    """Streams as edges: transforms release early, tees bound their buffer."""

    async def test_transform_delivers_first_chunk_before_upstream_finishes(self) -> None:
        fake = FakeLLM(tokens=["Hello", " there", " friend"], hold_last=True)
        async with fake.serve() as url:
            g = ServiceOrchestrator("early")
            g.add(RemoteLLM("llm", endpoint=url))
            g.add(Guardrail("guard", params={"patterns": [r"\d{3}-\d{4}"]}))
            g.flow_to("llm", "guard")
            async with g:
                stream = await g.run(chat(stream=True), g.context())
                texts = []
                async for chunk in stream:
                    texts.append(chunk.text)
                    if "Hello" in "".join(texts):
                        break
                assert not fake.finished  # the upstream still holds its last token
                fake.release()
                rest = [c async for c in stream]
                await stream.aclose()
        text = "".join(texts) + "".join(c.text for c in rest)
        assert text == "Hello there friend"
        assert rest[-1].meta is not None and rest[-1].meta["path"] == ["llm", "guard"]

    async def test_tee_with_a_slow_consumer_stays_within_its_buffer(self) -> None:
        tokens = [f"t{i} " for i in range(40)]
        fake = FakeLLM(tokens=tokens)
        seen: dict[str, int] = {"fast": 0, "slow": 0}
        leads: list[int] = []  # how far the fast branch is ahead, at each of its chunks

        class Consumer(MicroService):
            takes = (Port.STREAM,)
            gives = Port.TEXT

            def __init__(self, name: str, pause: int) -> None:
                super().__init__(name)
                self.pause = pause

            async def process(self, data: Any, ctx: Context) -> str:
                out = []
                async for chunk in data:
                    # Counted as soon as it is taken, so `seen` is the branch's position.
                    seen[self.name] += 1
                    if self.name == "fast":
                        leads.append(seen["fast"] - seen["slow"])
                    for _ in range(self.pause):
                        await asyncio.sleep(0)  # yield: the other branch runs ahead
                    out.append(chunk.text)
                return "".join(out)

        async with fake.serve() as url:
            g = ServiceOrchestrator("tee", tee_buffer=4)
            g.add(RemoteLLM("llm", endpoint=url))
            g.add(Consumer("fast", 0)).add(Consumer("slow", 20)).add(Fn("join", dict))
            g.flow_to("llm", "fast").flow_to("llm", "slow")
            g.flow_to("fast", "join").flow_to("slow", "join")
            async with g:
                result, _ = await run(g, chat(stream=True))
        assert result["fast"] == result["slow"] == "".join(tokens)
        assert seen["fast"] == seen["slow"] > 40
        # The fast branch ran ahead up to the buffer and no further: memory stayed bounded.
        assert max(leads) == 4


async def _chunks(texts: list[str]) -> AsyncIterator[Chunk]:
    for t in texts:
        yield Chunk(t)


class TestServiceTypesInGraphs:
    """Built-in nodes declare their ports; custom ones default to any."""

    def test_custom_nodes_take_anything(self) -> None:
        node = MicroService("x")
        assert node.service_type is ServiceType.CUSTOM
