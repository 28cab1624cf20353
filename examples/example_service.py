"""The seed's ExampleService, written with meshkit.

A megaservice on its own port: ``POST /v1/example-service`` (OpenAI dialect) and
``POST /api/generate`` (Ollama dialect) run the chain ``example -> llm``, where
``example`` formats the request and ``llm`` is a remote OpenAI-compatible server.
The answer streams back chunk by chunk. ``examples/example_service.yaml`` declares the
same chain in YAML.

Run it (configured by environment, as in Compose)::

    LLM_ENDPOINT=http://localhost:11434 python examples/example_service.py
    curl -N localhost:8000/api/generate -d '{"prompt": "Why is the sky blue?"}'
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from meshkit import (
    App,
    ChatRequest,
    Context,
    Message,
    MicroService,
    RemoteLLM,
    ServiceOrchestrator,
    ServiceType,
)

DEFAULT_MODEL = "llama3.2:1b"


class FormatRequest(MicroService):
    """Fills in the default model and a system prompt when the caller gave none."""

    service_type = ServiceType.CUSTOM

    async def process(self, data: Any, ctx: Context) -> ChatRequest:
        request: ChatRequest = data
        request = request.with_model(self.params.get("model", DEFAULT_MODEL))
        system = self.params.get("system")
        if system and not any(m.role == "system" for m in request.messages):
            request = attrs.evolve(request, messages=(Message("system", system), *request.messages))
        return request


def example_service(
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    llm_endpoint: str = "http://localhost:11434",
    model: str = DEFAULT_MODEL,
) -> App:
    """The seed's service: its own HTTP endpoints in front of a remote LLM."""
    example = FormatRequest("example", params={"model": model})
    llm = RemoteLLM("llm", endpoint=llm_endpoint, model=model)
    pipeline = ServiceOrchestrator("example").add(example).add(llm).flow_to(example, llm)
    return (
        App(host=host, port=port)
        .mount(pipeline, chat_path="/v1/example-service")
        .mount(pipeline, dialect="ollama")
    )


def main() -> None:
    """Serve the example, configured by environment variables."""
    example_service(
        host=os.environ.get("EXAMPLE_HOST", "0.0.0.0"),
        port=int(os.environ.get("EXAMPLE_PORT", "8000")),
        llm_endpoint=os.environ.get("LLM_ENDPOINT", "http://localhost:11434"),
        model=os.environ.get("LLM_MODEL") or DEFAULT_MODEL,
    ).run()


if __name__ == "__main__":
    main()
