"""OPEA system under test: one remote LLM node behind OPEA's MicroService gateway.

Runs inside ``benchmarks/.venvs/opea`` (``opea-comps==1.5``), wired the way OPEA's
example megaservices are: a :class:`comps.ServiceOrchestrator` holding one
``ServiceType.LLM`` :class:`comps.MicroService` marked ``use_remote_service`` (the fake
upstream), and a ``MEGASERVICE``-role :class:`comps.MicroService` whose FastAPI app
serves ``POST /v1/chat/completions`` by calling ``orchestrator.schedule``.

Streaming answers are OPEA's own ``StreamingResponse`` relaying the upstream's bytes
(no ``align_generator`` rewrite: the cheapest path OPEA offers). JSON answers are built
as OPEA's examples do, with its ``ChatCompletionResponse`` models.

Run: ``.venvs/opea/bin/python benchmarks/opea_megaservice.py --port 8000
--upstream http://127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlsplit

from comps import MicroService, ServiceOrchestrator, ServiceRoleType, ServiceType
from comps.cores.proto.api_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
    UsageInfo,
)
from comps.cores.proto.docarray import LLMParams
from fastapi import Request
from fastapi.responses import StreamingResponse


class ChatOrchestrator(ServiceOrchestrator):
    """Orchestrator whose LLM node receives an OpenAI chat request."""

    def align_inputs(self, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Turn the scheduled inputs into the body the LLM endpoint expects."""
        return {
            "model": inputs.get("model") or "bench",
            "messages": inputs["messages"],
            "max_tokens": inputs.get("max_tokens", 1024),
            "stream": inputs.get("stream", False),
        }


class ChatMegaservice:
    """The megaservice: gateway + orchestrator with one LLM node."""

    def __init__(self, port: int, upstream: str) -> None:
        self.port = port
        parts = urlsplit(upstream)
        self.orchestrator = ChatOrchestrator()
        llm = MicroService(
            name="llm",
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 80,
            endpoint="/v1/chat/completions",
            use_remote_service=True,
            service_type=ServiceType.LLM,
        )
        self.orchestrator.add(llm)

    async def handle(self, request: Request) -> Any:
        """``POST /v1/chat/completions``."""
        chat = ChatCompletionRequest.model_validate(await request.json())
        params = LLMParams(
            model=chat.model,
            max_tokens=chat.max_tokens or 1024,
            stream=bool(chat.stream),
        )
        result, graph = await self.orchestrator.schedule(
            initial_inputs={"messages": chat.messages, "model": chat.model},
            llm_parameters=params,
        )
        for response in result.values():
            if isinstance(response, StreamingResponse):
                return response
        last = graph.all_leaves()[-1]
        text = result[last]["choices"][0]["message"]["content"]
        return ChatCompletionResponse(
            model=chat.model or "bench",
            choices=[
                ChatCompletionResponseChoice(
                    index=0,
                    message=ChatMessage(role="assistant", content=text),
                    finish_reason="stop",
                )
            ],
            usage=UsageInfo(),
        )

    def start(self) -> None:
        """Build the gateway and serve until killed."""
        gateway = MicroService(
            self.__class__.__name__,
            service_role=ServiceRoleType.MEGASERVICE,
            host="127.0.0.1",
            port=self.port,
            endpoint="/v1/chat/completions",
            input_datatype=ChatCompletionRequest,
            output_datatype=ChatCompletionResponse,
        )
        gateway.add_route("/v1/chat/completions", self.handle, methods=["POST"])
        gateway.start()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="OPEA megaservice for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the LLM, without /v1")
    args = parser.parse_args()
    ChatMegaservice(args.port, args.upstream).start()


if __name__ == "__main__":
    main()
