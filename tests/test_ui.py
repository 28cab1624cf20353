"""The playground at /ui in a real browser: Debian's headless Chromium driven by Playwright.

Every test serves a real gateway (the one ``meshkit serve`` builds) in front of real
fake upstreams, loads the page in Chromium, and acts as a user does: through the
accessible names of the controls. Screenshots land in ``build/screenshots/`` (ignored by
git); ``docs/playground.png`` is a copy of one of them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from playwright.async_api import Browser, Page, async_playwright, expect

from meshkit import Mesh, build_app
from meshkit.gateway.ui import STATIC, catalogue, is_public
from meshkit.spec import loads
from meshkit.testing import FakeLLM, serve_app
from meshkit.testing_rag import FakeEmbedder

from .conftest import mesh_yaml

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
DOCS = Path("examples/rag/docs").resolve()
TOKENS = ("Rivers", " carry", " the", " rain", " back", " to", " the", " sea", ".")
WAIT = 15_000  # ms: bounds a hang only; every wait below ends on a condition


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium (``make test-deps`` installs it; Playwright never downloads one)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run 'make test-deps' (apt-get install chromium)")
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """A headless Chromium for the test."""
    expect.set_options(timeout=WAIT)  # a loaded CI machine is slow, not wrong
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab in its own browser context."""
    context = await browser.new_context(viewport={"width": 1360, "height": 860})
    context.set_default_timeout(WAIT)
    tab = await context.new_page()
    try:
        yield tab
    finally:
        await context.close()


@pytest.fixture
def seen(page: Page) -> list[str]:
    """Every URL the page requests, in order."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


@asynccontextmanager
async def gateway(text: str, **options: Any) -> AsyncIterator[str]:
    """Serve the gateway ``meshkit serve`` would build from ``text``; yield its URL."""
    app = build_app(Mesh(loads(text, env={})), **options)
    async with serve_app(app) as url:
        yield url


@pytest.fixture
async def slow() -> AsyncIterator[FakeLLM]:
    """A fake upstream that holds its last token until released."""
    llm = FakeLLM(tokens=TOKENS, delay=0.02, hold_last=True)
    async with llm.serve():
        yield llm


def rag_yaml(embed_url: str, llm_url: str) -> str:
    spec = yaml.safe_load(Path("examples/rag/services.yaml").read_text())
    spec["services"]["embed"].update(endpoint=embed_url)
    spec["services"]["llm"].update(endpoint=llm_url, model="llama3.2:1b")
    spec["services"]["retrieve"]["params"]["path"] = str(DOCS)
    return yaml.safe_dump(spec)


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def answer_text(page: Page) -> str:
    return str(await page.locator(".turn.assistant .answer").last.text_content())


async def ask(page: Page, text: str) -> None:
    await page.get_by_label("Message").fill(text)
    await page.get_by_role("button", name="Send").click()


async def open_ui(page: Page, url: str, model: str = "llama3.2:1b") -> None:
    await page.goto(url + "/ui")
    await expect(page.get_by_label("Model")).to_have_value(model)


def last_reply(page: Page) -> Any:
    return page.locator(".turn.assistant").last


class TestStreaming:
    """The answer streams into the page token by token, whole and in order."""

    async def test_answer_grows_before_the_stream_ends(
        self, page: Page, seen: list[str], slow: FakeLLM
    ) -> None:
        async with gateway(mesh_yaml(slow.url)) as url:
            await open_ui(page, url)
            await shot(page, "idle")
            await ask(page, "Where do rivers go?")
            held = "".join(TOKENS[:-1])
            # Everything but the held last token is on screen while the stream is open.
            await expect(page.get_by_role("log")).to_contain_text(held)
            assert await answer_text(page) == held
            await expect(last_reply(page)).to_have_attribute("data-state", "streaming")
            assert slow.in_flight == 1 and not slow.finished
            await expect(page.get_by_role("button", name="Stop")).to_be_enabled()
            await shot(page, "streaming")
            slow.release()
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            assert await answer_text(page) == "".join(TOKENS)
            await expect(page.get_by_role("button", name="Send")).to_be_enabled()
            assert slow.requests[-1]["stream"] is True
            assert slow.requests[-1]["messages"] == [
                {"role": "user", "content": "Where do rivers go?"}
            ]
            # Offline by construction: the page asked nothing of any other host.
            assert seen and all(u.startswith(url + "/") for u in seen)

    async def test_options_and_turns_reach_the_upstream(self, page: Page, fake: FakeLLM) -> None:
        async with gateway(mesh_yaml(fake.url)) as url:
            await open_ui(page, url)
            await page.get_by_label("System prompt").fill("Answer in one line.")
            await page.get_by_label("Temperature").fill("0.3")
            await page.get_by_label("Max tokens").fill("32")
            await ask(page, "Why is the sky blue?")
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            await ask(page, "And at sunset?")
            await expect(page.locator(".turn.assistant[data-state=done]")).to_have_count(2)
            sent = fake.requests[-1]
            assert sent["temperature"] == 0.3 and sent["max_tokens"] == 32
            assert sent["messages"] == [
                {"role": "system", "content": "Answer in one line."},
                {"role": "user", "content": "Why is the sky blue?"},
                {"role": "assistant", "content": "The sky appears blue."},
                {"role": "user", "content": "And at sunset?"},
            ]

    async def test_an_upstream_failure_is_shown(self, page: Page) -> None:
        broken = FakeLLM(status=503)
        async with broken.serve(), gateway(mesh_yaml(broken.url, retries=0)) as url:
            await open_ui(page, url)
            await ask(page, "Anyone there?")
            await expect(last_reply(page)).to_have_attribute("data-state", "error")
            await expect(last_reply(page).get_by_role("alert")).to_contain_text("503")


class TestStop:
    """Stop aborts the request in the page and the gateway cancels the upstream."""

    async def test_stop_cancels_the_upstream(self, page: Page) -> None:
        stalled = FakeLLM(tokens=TOKENS, stall_after=2)
        async with stalled.serve(), gateway(mesh_yaml(stalled.url)) as url:
            await open_ui(page, url)
            await ask(page, "Tell me a long story.")
            await expect(page.get_by_role("log")).to_contain_text("Rivers carry")
            await page.get_by_role("button", name="Stop").click()
            await asyncio.wait_for(stalled.cancelled.wait(), WAIT / 1000)
            await expect(last_reply(page)).to_have_attribute("data-state", "stopped")
            await expect(page.get_by_role("button", name="Send")).to_be_enabled()
            await expect(page.get_by_role("button", name="Stop")).to_be_disabled()
            assert stalled.completed == 0
            # The conversation goes on, with what was shown before the stop.
            stalled.stall_after = None
            await ask(page, "Go on.")
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            assert stalled.requests[-1]["messages"][1:] == [
                {"role": "assistant", "content": "Rivers carry"},
                {"role": "user", "content": "Go on."},
            ]


def guarded_yaml(endpoint: str) -> str:
    """A two-node pipeline, llm -> guard: the answer is pulled through the graph."""
    spec = yaml.safe_load(mesh_yaml(endpoint))
    spec["services"]["guard"] = {"type": "guardrail", "params": {"words": ["password123"]}}
    spec["pipelines"]["chat"] = {"edges": ["llm -> guard"]}
    return yaml.safe_dump(spec)


class TestReasoningAndTools:
    """Reasoning and tool calls are shown apart from the answer text."""

    @pytest.mark.parametrize("shape", [mesh_yaml, guarded_yaml], ids=["one-llm", "graph"])
    async def test_distinct_blocks(self, page: Page, shape: Any) -> None:
        thinker = FakeLLM(
            tokens=("Checking", " Oslo."),
            reasoning=("The user wants", " the weather."),
            tool_calls=({"id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}'},),
        )
        async with thinker.serve(), gateway(shape(thinker.url)) as url:
            await open_ui(page, url)
            await ask(page, "Weather in Oslo?")
            reply = last_reply(page)
            await expect(reply).to_have_attribute("data-state", "done")
            thought = "The user wants the weather."
            await expect(reply.locator(".reasoning pre")).to_have_text(thought)
            await expect(reply.locator(".tools pre")).to_have_text('weather({"city": "Oslo"})')
            await expect(reply.locator(".answer")).to_have_text("Checking Oslo.")


class TestGraph:
    """The pipeline is drawn; the last request's path is marked, skipped nodes dimmed."""

    async def test_rag_pipeline_path(self, page: Page, fake: FakeLLM) -> None:
        embedder = FakeEmbedder()
        async with embedder.serve(), gateway(rag_yaml(embedder.url, fake.url)) as url:
            await open_ui(page, url)
            drawing = page.get_by_role("img", name=re.compile(r"^Pipeline rag"))
            await expect(drawing).to_be_visible()
            nodes = drawing.locator("g.node")
            names = {"embed", "retrieve", "rerank", "prompt", "llm", "guard"}
            await expect(nodes).to_have_count(len(names))
            assert {await n.get_attribute("data-node") for n in await nodes.all()} == names
            await expect(drawing.locator("g.edge text.cond")).to_have_count(2)  # the conditions

            await ask(page, "qwxz?")  # matches no document: the reranker is skipped
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            await expect(drawing).to_have_accessible_name(
                "Pipeline rag; last request took embed → retrieve → prompt → llm → guard; "
                "skipped rerank"
            )
            state = {
                str(await n.get_attribute("data-node")): await n.get_attribute("data-state")
                for n in await nodes.all()
            }
            assert state == {
                "embed": "taken",
                "retrieve": "taken",
                "rerank": "skipped",
                "prompt": "taken",
                "llm": "taken",
                "guard": "taken",
            }
            taken = drawing.locator("g.edge.taken[data-kind=inner]")
            pairs = [
                (await e.get_attribute("data-from"), await e.get_attribute("data-to"))
                for e in await taken.all()
            ]
            assert sorted(pairs) == sorted(
                [("embed", "retrieve"), ("retrieve", "prompt"), ("prompt", "llm"), ("llm", "guard")]
            )
            # Each node that ran shows its time.
            await expect(drawing.locator("g.node[data-state=taken] text.ms")).to_have_count(5)
            await expect(page.locator("#timing")).to_contain_text("first token")
            # A scrape after the answer replaced the placeholder dash ("off" without /metrics).
            await expect(page.locator("[data-stat=ttft_p50]")).not_to_have_text("\u2013")
            await shot(page, "graph")

            await ask(page, "Why is the sky blue at noon and red at sunset?")
            await expect(page.locator(".turn.assistant[data-state=done]")).to_have_count(2)
            await expect(drawing.locator("g.node[data-node=rerank]")).to_have_attribute(
                "data-state", "taken"
            )
            await expect(
                drawing.locator("g.edge.taken[data-from=retrieve][data-to=prompt]")
            ).to_have_count(0)

    async def test_switching_routes(self, page: Page, fake: FakeLLM) -> None:
        """Each route draws its own pipeline; a one-node pipeline marks its node too."""
        spec = yaml.safe_load(mesh_yaml(fake.url))
        spec["services"]["second"] = dict(spec["services"]["llm"])
        spec["pipelines"]["other"] = {"nodes": ["second"]}
        spec["gateway"]["routes"].append(
            {"dialect": "openai", "pipeline": "other", "prefix": "/other"}
        )
        async with gateway(yaml.safe_dump(spec)) as url:
            await open_ui(page, url)
            await expect(page.get_by_role("img", name="Pipeline chat")).to_be_visible()
            await page.get_by_label("Route").select_option(label="other (/other)")
            drawing = page.get_by_role("img", name=re.compile(r"^Pipeline other"))
            await expect(drawing.locator("g.node")).to_have_count(1)
            await ask(page, "Which one?")
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            await expect(drawing.locator("g.node[data-node=second]")).to_have_attribute(
                "data-state", "taken"
            )
            await expect(drawing).to_have_accessible_name(
                "Pipeline other; last request took second"
            )
            assert fake.requests[-1]["messages"] == [{"role": "user", "content": "Which one?"}]


class TestStatusPanel:
    """The panel reads /metrics: in flight rises during a stream and returns to 0."""

    async def test_in_flight(self, page: Page, slow: FakeLLM) -> None:
        async with gateway(mesh_yaml(slow.url)) as url:
            await open_ui(page, url)
            in_flight = page.locator("[data-stat=in_flight]")
            await expect(page.locator("#metrics-state")).to_have_text("live")
            await expect(in_flight).to_have_text("0")
            await ask(page, "Count me.")
            await expect(page.get_by_role("log")).to_contain_text("Rivers")
            await expect(in_flight).to_have_text("1")
            slow.release()
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            await expect(in_flight).to_have_text("0")
            # The stream's first token was timed, and the upstream replica is up.
            await expect(page.locator("[data-stat=ttft_p50]")).to_have_text(re.compile(r"\d"))
            await expect(page.get_by_role("list", name="Replicas")).to_have_text(
                f"llm {slow.url}: up"
            )
            await expect(page.locator("[data-stat=errors]")).to_have_text("0")

    async def test_without_metrics_it_says_so(self, page: Page, fake: FakeLLM) -> None:
        async with gateway(mesh_yaml(fake.url), metrics=False) as url:
            await open_ui(page, url)
            await expect(page.locator("#metrics-state")).to_contain_text("metrics off")
            await expect(page.locator("[data-stat=in_flight]")).to_have_text("off")

    async def test_arithmetic(self, page: Page, fake: FakeLLM) -> None:
        """Quantiles interpolate within a bucket; rates are per second between scrapes."""
        text = "\n".join(
            [
                "# TYPE meshkit_time_to_first_token_seconds histogram",
                'meshkit_time_to_first_token_seconds_bucket{pipeline="a",model="m",le="0.1"} 0',
                'meshkit_time_to_first_token_seconds_bucket{pipeline="a",model="m",le="0.25"} 1',
                'meshkit_time_to_first_token_seconds_bucket{pipeline="b",model="m",le="0.25"} 1',
                'meshkit_time_to_first_token_seconds_bucket{pipeline="a",model="m",le="0.5"} 2',
                'meshkit_time_to_first_token_seconds_bucket{pipeline="b",model="m",le="0.5"} 2',
                'meshkit_time_to_first_token_seconds_bucket{pipeline="a",model="m",le="+Inf"} 2',
                'meshkit_time_to_first_token_seconds_bucket{pipeline="b",model="m",le="+Inf"} 2',
                'meshkit_requests_total{pipeline="a",dialect="openai",code="200"} 30',
                'meshkit_requests_total{pipeline="a",dialect="openai",code="502"} 2',
                'meshkit_requests_total{pipeline="other",dialect="other",code="404"} 1',
                'meshkit_requests_in_flight{pipeline="a"} 2',
                'meshkit_requests_in_flight{pipeline="b"} 1',
                'meshkit_tokens_total{pipeline="a",model="m",type="input"} 500',
                'meshkit_tokens_total{pipeline="a",model="m",type="output"} 120',
                'meshkit_upstream_up{service="llm",replica="http://x:1"} 1',
                'meshkit_upstream_up{service="llm",replica="http://y:1"} 0',
            ]
        )
        async with gateway(mesh_yaml(fake.url)) as url:
            await open_ui(page, url)
            got = await page.evaluate(
                """async (text) => {
                    const m = await import("/ui/status.js");
                    const before = {total: 13, tokens: 20};
                    return m.summarise(m.parse(text), before, 2);
                }""",
                text,
            )
        assert got["in_flight"] == 3 and got["errors"] == 3 and got["total"] == 33
        assert got["rate"] == 10 and got["tokens_rate"] == 50  # (33-13)/2, (120-20)/2
        assert got["ttft_p50"] == pytest.approx(0.25)  # rank 2 of 4: top of (0.1, 0.25]
        assert got["ttft_p99"] == pytest.approx(0.25 + 0.25 * 1.96 / 2)
        assert got["replicas"] == [
            {"service": "llm", "replica": "http://x:1", "up": True},
            {"service": "llm", "replica": "http://y:1", "up": False},
        ]


class TestKeys:
    """With keys set the page asks for one, shows a wrong one, streams with a good one."""

    async def test_ask_refuse_accept(self, page: Page, seen: list[str], slow: FakeLLM) -> None:
        async with gateway(mesh_yaml(slow.url), api_keys=["s3cret-key"]) as url:
            await page.goto(url + "/ui")
            key = page.get_by_label("API key")
            await expect(key).to_be_visible()
            # The page's own files loaded without a key.
            assert any(u.endswith("/ui/app.js") for u in seen)
            await expect(page.get_by_label("Message")).to_be_hidden()  # no chat without a key
            await key.fill("not-the-key")
            await page.get_by_role("button", name="Use key").click()
            await expect(page.get_by_role("alert")).to_contain_text("Wrong key")
            await shot(page, "key")
            await key.fill("s3cret-key")
            await page.get_by_role("button", name="Use key").click()
            await expect(page.get_by_label("Model")).to_have_value("llama3.2:1b")
            await expect(key).to_be_hidden()
            await ask(page, "Secret rivers?")
            await expect(page.get_by_role("log")).to_contain_text("".join(TOKENS[:-1]))
            slow.release()
            await expect(last_reply(page)).to_have_attribute("data-state", "done")
            assert await answer_text(page) == "".join(TOKENS)
            assert "authorization" not in {h.lower() for h in slow.headers[-1]}


class TestServing:
    """What the gateway serves under /ui, with and without keys (no browser)."""

    async def test_files_open_api_closed(self, fake: FakeLLM) -> None:
        async with (
            gateway(mesh_yaml(fake.url), api_keys=["k"]) as url,
            aiohttp.ClientSession() as http,
        ):
            for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
                async with http.get(url + path) as resp:
                    assert resp.status == 200, path
            async with http.get(url + "/ui/app.js") as resp:
                assert resp.content_type in ("text/javascript", "application/javascript")
            async with http.get(url + "/ui/") as resp:
                assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            async with http.get(url + "/ui", allow_redirects=False) as resp:
                assert resp.status == 308 and resp.headers["Location"] == "/ui/"
            for path in ("/ui/api/graph", "/ui/../v1/models", "/ui/%2e%2e/v1/models"):
                async with http.get(url + path) as resp:
                    assert resp.status == 401, path
            async with http.get(
                url + "/ui/api/graph", headers={"Authorization": "Bearer k"}
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["routes"][0] == {
                "dialect": "openai",
                "prefix": "",
                "pipeline": "chat",
                "model": "llama3.2:1b",
            }

    def test_public_paths(self) -> None:
        assert is_public("/ui") and is_public("/ui/") and is_public("/ui/graph.js")
        assert not is_public("/ui/api/graph") and not is_public("/uix") and not is_public("/v1")

    def test_shipped_files(self) -> None:
        assert {p.name for p in STATIC.iterdir()} >= {
            "index.html",
            "app.js",
            "api.js",
            "graph.js",
            "status.js",
            "style.css",
        }

    def test_catalogue_is_the_graph_meshkit_prints(self) -> None:
        mesh = Mesh(loads(rag_yaml("http://127.0.0.1:9", "http://127.0.0.1:9"), env={}))
        rag = mesh.pipelines["rag"]
        described = catalogue([], mesh.pipelines)["pipelines"]["rag"]
        assert [n["name"] for n in described["nodes"]] == list(rag.plan())
        assert [(e["from"], e["to"]) for e in described["edges"]] == [
            (e.src, e.dst) for e in rag.edges
        ]
        conditions = {e["when"] for e in described["edges"] if e["when"]}
        assert conditions == {"len(output) > 0", "len(output) == 0"}
        assert described["sink"] == "guard"
        assert [n["name"] for n in described["nodes"] if n["entry"]] == ["embed"]
