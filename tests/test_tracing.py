"""Traces through the real OTLP/HTTP exporter, decoded by a receiver in the test.

Two ``meshkit serve`` processes in a chain (hop 1's LLM is hop 2, whose LLM is a fake),
each configured only by ``OTEL_*`` variables, export to an OTLP/HTTP receiver that
decodes the protobuf payloads with ``opentelemetry-proto``. A caller's ``traceparent``
must come out as one trace: both hops' spans, and the ``traceparent`` the fake receives.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from meshkit.observability.tracing import from_environment, trace_id_of, wanted
from meshkit.testing import FakeLLM, serve_app

from .processes import ROOT, Meshkit
from .test_resilience import CHAT, mesh_text, start

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PROMPT = "PROMPT-SECRET-Why-is-the-sky-blue"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # Span.SpanKind values
ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


def plain(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [plain(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@attrs.frozen
class Span:
    """One decoded span, with its service's name."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int


@attrs.define
class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with protobuf bodies."""

    spans: list[Span] = attrs.field(factory=list)
    url: str = ""
    arrived: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Span(
                            service=str(resource.get("service.name")),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: plain(a.value) for a in s.attributes},
                            status=s.status.code,
                        )
                    )
        self.arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def of(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def until(self, trace_id: str, count: int, within: float = 20.0) -> list[Span]:
        """The spans of ``trace_id`` once at least ``count`` have arrived (bounded)."""
        async with asyncio.timeout(within):
            while len(self.of(trace_id)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.of(trace_id)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An OTLP/HTTP receiver on a free port."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.traces)
    async with serve_app(app) as url:
        rec.url = url
        yield rec


def chain_yaml(endpoint: str) -> str:
    return mesh_text(endpoint)  # one LLM, both dialects, no health probes


def otel_env(receiver: Receiver, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


def one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


class TestTwoHops:
    """A caller's trace through two meshkit hops and into the model server."""

    async def test_one_trace_with_genai_attributes(
        self, receiver: Receiver, fake: FakeLLM, tmp_path: Path
    ) -> None:
        async with (
            Meshkit(chain_yaml(fake.url), tmp_path, otel_env(receiver, "hop2")) as hop2,
            Meshkit(chain_yaml(hop2.url), tmp_path, otel_env(receiver, "hop1")) as hop1,
            aiohttp.ClientSession() as session,
        ):
            body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
            headers = {"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}
            async with session.post(
                hop1.url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                assert resp.status == 200
                answer = await resp.read()
            assert answer.endswith(b"data: [DONE]\n\n")
            spans = await receiver.until(TRACE, 6)

        server1 = one(spans, service="hop1", kind=SERVER)
        node1 = one(spans, service="hop1", kind=INTERNAL)
        client1 = one(spans, service="hop1", kind=CLIENT)
        server2 = one(spans, service="hop2", kind=SERVER)
        node2 = one(spans, service="hop2", kind=INTERNAL)
        client2 = one(spans, service="hop2", kind=CLIENT)
        assert len(spans) == 6
        # The tree: caller → hop1 server → node → client → hop2 server → node → client.
        assert server1.parent_id == CALLER_SPAN
        assert node1.parent_id == server1.span_id and client1.parent_id == node1.span_id
        assert server2.parent_id == client1.span_id
        assert node2.parent_id == server2.span_id and client2.parent_id == node2.span_id
        assert fake.headers[-1]["traceparent"] == f"00-{TRACE}-{client2.span_id}-01"
        # Names and attributes.
        assert server1.name == server2.name == "POST /v1/chat/completions"
        assert node1.name == "node llm"
        assert client1.name == client2.name == "chat llama3.2:1b"
        assert server1.attributes["http.response.status_code"] == 200
        for client, port in ((client1, hop2.port), (client2, int(fake.url.rsplit(":", 1)[1]))):
            a = client.attributes
            assert a["gen_ai.operation.name"] == "chat"
            assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "llama3.2:1b"
            assert a["gen_ai.response.finish_reasons"] == ["stop"]
            assert a["gen_ai.usage.input_tokens"] == 3
            assert a["gen_ai.usage.output_tokens"] == 5
            assert a["server.address"] == "127.0.0.1" and a["server.port"] == port
            assert 0 < a["gen_ai.response.time_to_first_chunk"] < 10
            assert "error.type" not in a and client.status != ERROR
        # Prompts and answers are never recorded.
        recorded = repr([(s.name, s.attributes) for s in spans])
        assert PROMPT not in recorded and "appears" not in recorded

    async def test_a_failed_attempt_has_its_error_type(
        self, receiver: Receiver, fake: FakeLLM, tmp_path: Path
    ) -> None:
        trace = "0af7651916cd43dd8448eb211c80319c"
        async with (
            Meshkit(chain_yaml(fake.url), tmp_path, otel_env(receiver, "solo")) as gw,
            aiohttp.ClientSession() as session,
        ):
            async with session.post(
                gw.url + "/v1/chat/completions",
                json={**CHAT, "model": "ghost"},
                headers={"traceparent": f"00-{trace}-{CALLER_SPAN}-01"},
            ) as resp:
                assert resp.status == 404
            spans = await receiver.until(trace, 3)
        client = one(spans, kind=CLIENT)
        assert client.name == "chat ghost"
        assert client.attributes["error.type"] == "model_not_found"
        assert client.status == ERROR
        assert one(spans, kind=SERVER).attributes["http.response.status_code"] == 404


class TestWithoutTracing:
    """No ``OTEL_*``: nothing made, nothing exported, the caller's context still passed on."""

    def test_environment_decides(self) -> None:
        assert wanted({}) == []
        assert wanted({"OTEL_TRACES_EXPORTER": "none"}) == []
        assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) == ["otlp"]
        assert wanted({"OTEL_TRACES_EXPORTER": "otlp,console"}) == ["otlp", "console"]
        assert wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
        assert from_environment({}) is None
        assert trace_id_of(f"00-{TRACE}-{CALLER_SPAN}-01") == TRACE
        assert trace_id_of("garbage") is None

    def test_the_sdk_is_never_imported(self, tmp_path: Path) -> None:
        script = (
            "import sys\n"
            "from meshkit import Mesh, build_app\n"
            "from meshkit.spec import loads\n"
            f"build_app(Mesh(loads({mesh_text('http://127.0.0.1:9')!r}, env={{}})))\n"
            "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
            "assert not loaded, loaded\n"
        )
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    async def test_the_callers_traceparent_is_passed_on(
        self, fake: FakeLLM, aiohttp_client
    ) -> None:
        gw = await start(aiohttp_client, mesh_text(fake.url))
        parent = f"00-{TRACE}-{CALLER_SPAN}-01"
        resp = await gw.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"traceparent": parent, "tracestate": "vendor=1"},
        )
        assert resp.status == 200
        assert fake.headers[-1]["traceparent"] == parent
        assert fake.headers[-1]["tracestate"] == "vendor=1"
