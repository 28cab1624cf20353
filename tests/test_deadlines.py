"""The first-token deadline of an upstream call: one lazy timer per pool instead of a
timer per call or per connection, still failing each call at its own deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from meshkit import RemoteLLM, ServiceOrchestrator
from meshkit.client import h1
from meshkit.client.http import Timeouts
from meshkit.client.pool import Pool
from meshkit.errors import UpstreamTimeout
from meshkit.protocol.types import ChatRequest, Message
from meshkit.testing import FakeLLM

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SLACK = 1.0  # how late a loaded test loop may run a timer


@asynccontextmanager
async def upstream(
    answers: asyncio.Queue[bool], rest: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, str, int]]:
    """A keep-alive server: for each request, answers at once when the queue says True,
    and never when it says False (the request waits until the client gives up). With
    ``rest``, an answer's head goes at once and its body once ``rest`` is set."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if await answers.get():
                    if rest is not None:
                        writer.write(OK[:-2])
                        await writer.drain()
                        await rest.wait()
                    writer.write(OK[-2:] if rest is not None else OK)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield ("http", "127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


WIRE = h1.encode_request("GET", b"/", b"127.0.0.1", {}, None)


async def ask(pool: Pool, key: tuple[str, str, int], within: float) -> float:
    """One request with a deadline ``within`` s away on a pooled connection; the loop
    time its head arrived (TimeoutError when the deadline came first)."""
    loop = asyncio.get_running_loop()
    conn = await pool.connection(key, within=5)
    response = conn.send(WIRE)
    response.expire_at(loop.time() + within, "no answer in time")
    try:
        await response.head()
        response.in_time()
        await response.read()
    except BaseException:
        response.close()
        raise
    response.release()
    return loop.time()


@pytest.mark.timeout(30)
class TestConnectionDeadline:
    """Each call on a connection fails at its own deadline, and only then."""

    async def test_a_call_with_no_answer_fails_at_its_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bool] = asyncio.Queue()
        answers.put_nowait(False)
        async with upstream(answers) as key:
            pool = Pool()
            start = loop.time()
            with pytest.raises(TimeoutError, match="no answer in time"):
                await ask(pool, key, 0.2)
            assert start + 0.2 <= loop.time() < start + 0.2 + SLACK
            pool.close()

    async def test_answered_calls_are_never_failed_later(self) -> None:
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bool] = asyncio.Queue()
        async with upstream(answers) as key:
            pool = Pool()
            for _ in range(300):  # one keep-alive connection, many deadlines
                answers.put_nowait(True)
                await ask(pool, key, 0.15)
            assert pool.idle == 1
            # Every deadline set above passes; the idle connection stays usable.
            passed: asyncio.Future[None] = loop.create_future()
            loop.call_later(0.3, passed.set_result, None)
            await passed
            answers.put_nowait(True)
            await ask(pool, key, 5)
            assert pool.idle == 1
            pool.close()

    async def test_a_body_read_after_the_head_is_not_bounded(self) -> None:
        """The deadline bounds the head: a body still arriving after it is not failed."""
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bool] = asyncio.Queue()
        rest = asyncio.Event()
        async with upstream(answers, rest) as key:
            pool = Pool()
            answers.put_nowait(True)
            conn = await pool.connection(key, within=5)
            response = conn.send(WIRE)
            response.expire_at(loop.time() + 0.1, "no answer in time")
            await response.head()
            response.in_time()
            loop.call_later(0.4, rest.set)  # the body comes after the deadline
            assert await response.read() == b"ok"
            response.release()
            assert pool.idle == 1
            pool.close()

    async def test_a_later_call_waits_for_its_own_deadline(self) -> None:
        """The connection's timer, armed for an earlier call, re-arms for the later one."""
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bool] = asyncio.Queue()
        async with upstream(answers) as key:
            pool = Pool()
            answers.put_nowait(True)
            await ask(pool, key, 0.2)  # arms the timer for ~0.2 s from now
            answers.put_nowait(False)
            start = loop.time()
            with pytest.raises(TimeoutError):
                await ask(pool, key, 0.6)
            assert start + 0.6 <= loop.time() < start + 0.6 + SLACK
            pool.close()

    async def test_a_sooner_deadline_is_not_kept_waiting(self) -> None:
        """A call bounded sooner than the armed timer re-arms it sooner."""
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bool] = asyncio.Queue()
        async with upstream(answers) as key:
            pool = Pool()
            answers.put_nowait(True)
            await ask(pool, key, 60)  # arms the timer a minute away
            answers.put_nowait(False)
            start = loop.time()
            with pytest.raises(TimeoutError):
                await ask(pool, key, 0.2)
            assert start + 0.2 <= loop.time() < start + 0.2 + SLACK
            pool.close()

    async def test_calls_on_several_connections_fail_each_at_its_own(self) -> None:
        """Two unanswered calls at once on two connections, the later one bounded
        sooner: it fails at its own deadline, the other one later at its own."""
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bool] = asyncio.Queue()
        async with upstream(answers) as key:
            pool = Pool()
            answers.put_nowait(False)
            answers.put_nowait(False)
            first = await pool.connection(key, within=5)
            second = await pool.connection(key, within=5)
            assert first is not second
            start = loop.time()
            late = first.send(WIRE)
            late.expire_at(start + 2.0, "no answer in time")
            soon = second.send(WIRE)
            soon.expire_at(start + 0.2, "no answer in time")
            for response, within in ((soon, 0.2), (late, 2.0)):
                with pytest.raises(TimeoutError, match="no answer in time"):
                    await response.head()
                assert start + within <= loop.time() < start + within + SLACK
                response.close()
            pool.close()


CHAT = ChatRequest(messages=(Message("user", "hi"),))


@pytest.mark.timeout(30)
class TestFirstTokenBudget:
    """An LLM call with no first token within its budget fails in time, twice in a row
    on the same connection."""

    async def test_budget_ends_each_call(self) -> None:
        fake = FakeLLM(first_delay=30)
        async with fake.serve():
            llm = RemoteLLM(
                "llm", endpoint=fake.url, timeouts=Timeouts(first_byte=0.4), health_interval=0
            )
            async with ServiceOrchestrator().add(llm) as mesh:
                loop = asyncio.get_running_loop()
                for _ in range(2):
                    start = loop.time()
                    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.4 s"):
                        await mesh.run(CHAT)
                    assert start + 0.4 <= loop.time() < start + 0.4 + SLACK
