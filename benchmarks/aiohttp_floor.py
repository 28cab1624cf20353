"""The floor for a Python gateway: a bare aiohttp relay with no features at all.

It forwards ``POST /v1/chat/completions`` to the upstream and copies the answer back
byte for byte (``iter_any`` → ``write``), with one pooled client session, uvloop and
nothing else: no parsing, no validation, no timeouts, no error mapping. meshkit is
built on the same server and client, so this is what meshkit would cost if all of its
own work were free; the difference between the two is meshkit's share.

Run: ``python benchmarks/aiohttp_floor.py --port 9100 --upstream http://127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    """Forward one chat request and copy the answer back as it arrives."""
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(
        request.app[UPSTREAM] + request.path,
        data=body,
        headers={"Content-Type": "application/json"},
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
        )
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


async def models(request: web.Request) -> web.Response:
    """Forward ``GET /v1/models`` (the harness's readiness probe)."""
    async with request.app[SESSION].get(request.app[UPSTREAM] + "/v1/models") as upstream:
        return web.Response(body=await upstream.read(), content_type="application/json")


def main() -> None:
    """Serve the relay until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_get("/v1/models", models)
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop, backlog=4096
    )


if __name__ == "__main__":
    main()
