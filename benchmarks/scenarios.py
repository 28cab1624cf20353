"""The measured scenarios of issues 6 and 16 and the load tools that drive them.

Each ``scenario_*`` function runs one repetition against a started system and returns
flat ``metric -> value`` figures. CPU time of the system under test (SUT) is read from
``/proc`` over its whole process tree right before and after the load; the load
generator's own CPU comes from ``RUSAGE_CHILDREN`` around it, the upstream's from
``/proc`` too, so the report can say when the shared core (upstream + generator) was
saturated.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procstat
from systems import API_KEY, HERE, System

Figures = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario; ``quick`` shrinks durations and counts."""

    reps: int
    s1_seconds: float
    s2_ttft_streams: int
    s2_waves: int
    s3_reps: int
    s4_streams: int
    burst: int = 1000  # scenario 6: streams opened at the same instant

    @classmethod
    def make(cls, quick: bool, reps: int | None, burst: int = 1000) -> Plan:
        """The full plan, or the quick one (the burst keeps its size: it takes seconds)."""
        if quick:
            return cls(reps or 2, 3.0, 20, 3, 1, 3, burst)
        return cls(reps or 3, 10.0, 60, 8, reps or 3, 10, burst)


@dataclass
class Bench:
    """What the scenarios need besides the system: upstream, cores, scratch folder."""

    upstream_url: str
    upstream_pid: int
    gen_cpu: int
    scratch: Path
    plan: Plan


class ScenarioError(RuntimeError):
    """A repetition could not be measured (system failed, answers wrong)."""


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU of SUT, upstream and generator, wall time and peak SUT RSS around a load."""

    def __init__(self, system: System, bench: Bench, sample_rss: bool = False) -> None:
        self._roots = system.roots()
        self._bench = bench
        self._rss = procstat.PeakRss(self._roots) if sample_rss and self._roots else None
        self.figures: Figures = {}

    def __enter__(self) -> Meter:
        if self._rss is not None:
            self._rss.__enter__()
        self._t0 = time.perf_counter()
        self._sut0 = procstat.cpu_seconds(self._roots)
        self._up0 = procstat.cpu_seconds([self._bench.upstream_pid])
        self._gen0 = _children_cpu()
        self._all0 = procstat.machine_busy_seconds()
        self._me0 = _self_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        sut = procstat.cpu_seconds(self._roots) - self._sut0
        up = procstat.cpu_seconds([self._bench.upstream_pid]) - self._up0
        gen = _children_cpu() - self._gen0
        ours = sut + up + gen + _self_cpu() - self._me0
        self.figures["other_load_cores"] = max(
            0.0, (procstat.machine_busy_seconds() - self._all0 - ours) / wall
        )
        if self._rss is not None:
            self._rss.__exit__()
            self.figures["peak_rss_mib"] = self._rss.peak / 2**20
        self.figures.update(
            wall_s=wall,
            sut_cpu_s=sut if self._roots else None,
            upstream_cpu_s=up,
            gen_cpu_s=gen,
            sut_core_busy=sut / wall if self._roots else None,
            gen_core_busy=(up + gen) / wall,
        )


def _pinned(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


_WRK_LUA = """\
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk(bench: Bench, url: str, model: str, connections: int, seconds: float) -> Figures:
    """Closed-loop non-streaming load with wrk (one thread) pinned to the generator core."""
    script = bench.scratch / "post.lua"
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "bench chunks=16"}]}
    )
    script.write_text(_WRK_LUA.format(body=body, key=API_KEY))
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=_pinned(bench.gen_cpu),
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return dict(json.loads(line[8:]))
    raise ScenarioError(f"wrk printed no summary: {out.stdout[-300:]} {out.stderr[-300:]}")


def loadgen(
    bench: Bench,
    url: str,
    model: str,
    *,
    concurrency: int,
    requests: int,
    chunks: int,
    gap_ms: float,
    stream: bool = True,
    timeout: float = 120.0,
    deadline: float = 120.0,
    extra: list[str] | None = None,
) -> Figures:
    """Run ``loadgen.py`` pinned to the generator core and return its summary."""
    argv = [
        sys.executable,
        str(HERE / "loadgen.py"),
        "--url",
        url,
        "--model",
        model,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--chunks",
        str(chunks),
        "--gap-ms",
        str(gap_ms),
        "--timeout",
        str(timeout),
        "--deadline",
        str(deadline),
        "--cpu",
        str(bench.gen_cpu),
        "--api-key",
        API_KEY,
        *(extra or []),
    ]
    if not stream:
        argv.append("--no-stream")
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=deadline + timeout + 60, check=False
    )
    if out.returncode != 0:
        raise ScenarioError(f"loadgen failed: {out.stderr[-500:]}")
    return dict(json.loads(out.stdout))


def _require_complete(summary: Figures, what: str) -> None:
    if summary["complete"] != summary["requests"] or summary["errors"]:
        raise ScenarioError(
            f"{what}: {summary['complete']}/{summary['requests']} complete, errors "
            f"{summary['errors']}, first bad answer: {summary['first_bad']!r}"
        )


def probe(system: System, bench: Bench) -> None:
    """Check the system answers correctly (JSON and stream) before measuring it."""
    url = system.chat_url
    _require_complete(
        loadgen(
            bench,
            url,
            system.model,
            concurrency=1,
            requests=3,
            chunks=16,
            gap_ms=0,
            stream=False,
            deadline=30,
            timeout=30,
        ),
        "JSON probe",
    )
    _require_complete(
        loadgen(
            bench,
            url,
            system.model,
            concurrency=2,
            requests=4,
            chunks=16,
            gap_ms=1,
            deadline=30,
            timeout=30,
        ),
        "stream probe",
    )


def warm_s1(system: System, bench: Bench) -> None:
    """Warm connections and caches before scenario 1."""
    wrk(bench, system.chat_url, system.model, 8, 1)


def scenario_1(system: System, bench: Bench) -> Figures:
    """Non-streaming: throughput and CPU at concurrency 32, latency at concurrency 1."""
    seconds = bench.plan.s1_seconds
    with Meter(system, bench) as meter:
        sat = wrk(bench, system.chat_url, system.model, 32, seconds)
    fig = meter.figures
    n = sat["requests"]
    errors = sat["connect"] + sat["read"] + sat["write"] + sat["status"] + sat["timeout"]
    lat = wrk(bench, system.chat_url, system.model, 1, seconds)
    return {
        "rps_c32": n / (sat["duration_us"] / 1e6),
        "cpu_us_per_req_c32": fig["sut_cpu_s"] * 1e6 / n
        if fig["sut_cpu_s"] is not None and n
        else None,
        "sut_core_busy_c32": fig["sut_core_busy"],
        "gen_core_busy_c32": fig["gen_core_busy"],
        "wrk_core_busy_c32": fig["gen_cpu_s"] / fig["wall_s"],
        "errors_c32": errors,
        "p50_ms_c1": lat["p50_us"] / 1000.0,
        "p99_ms_c1": lat["p99_us"] / 1000.0,
        "other_load_cores_c32": fig["other_load_cores"],
        "errors_c1": lat["connect"] + lat["read"] + lat["write"] + lat["status"] + lat["timeout"],
    }


def warm_streams(system: System, bench: Bench) -> None:
    """Warm up the streaming path."""
    loadgen(
        bench,
        system.chat_url,
        system.model,
        concurrency=10,
        requests=20,
        chunks=64,
        gap_ms=1,
        deadline=60,
    )


def scenario_2(system: System, bench: Bench) -> Figures:
    """64 chunks 5 ms apart: TTFT at one stream; CPU per chunk at 100 streams."""
    plan = bench.plan
    with Meter(system, bench) as quiet:
        one = loadgen(
            bench,
            system.chat_url,
            system.model,
            concurrency=1,
            requests=plan.s2_ttft_streams,
            chunks=64,
            gap_ms=5,
            deadline=120,
            extra=["--warmup", "1"],
        )
    _require_complete(one, "single stream")
    streams = 100 * plan.s2_waves
    with Meter(system, bench) as meter:
        many = loadgen(
            bench,
            system.chat_url,
            system.model,
            concurrency=100,
            requests=streams,
            chunks=64,
            gap_ms=5,
            deadline=240,
            timeout=200,
        )
    fig = meter.figures
    sut = fig["sut_cpu_s"]
    return {
        "ttft_p50_ms_1": one["ttft_ms"]["p50"],
        "ttft_p99_ms_1": one["ttft_ms"]["p99"],
        "other_load_cores_1": quiet.figures["other_load_cores"],
        "cpu_us_per_chunk_100": sut * 1e6 / many["events"]
        if sut is not None and many["events"]
        else None,
        "cpu_us_per_stream_100": sut * 1e6 / many["ok"] if sut is not None and many["ok"] else None,
        "streams_100": many["requests"],
        "complete_100": many["complete"],
        "in_order_100": many["in_order"],
        "chunks_100": many["events"],
        "expected_chunks_100": many["expected_events"],
        "errors_100": sum(many["errors"].values()),
        "ttft_p99_ms_100": many["ttft_ms"]["p99"],
        "sut_core_busy_100": fig["sut_core_busy"],
        "gen_core_busy_100": fig["gen_core_busy"],
        "loadgen_core_busy_100": many["cpu_s"] / many["wall_s"],
        "other_load_cores_100": fig["other_load_cores"],
    }


def scenario_3(system: System, bench: Bench) -> Figures:
    """1000 concurrent slow streams (20 chunks, 50 ms apart): completion, RSS, TTFT p99."""
    with Meter(system, bench, sample_rss=True) as meter:
        res = loadgen(
            bench,
            system.chat_url,
            system.model,
            concurrency=1000,
            requests=1000,
            chunks=20,
            gap_ms=50,
            deadline=30,
            timeout=180,
        )
    fig = meter.figures
    return {
        "completed_1000": res["complete"],
        "in_order_1000": res["in_order"],
        "errors_1000": sum(res["errors"].values()),
        "ttft_p50_ms_1000": res["ttft_ms"]["p50"],
        "ttft_p99_ms_1000": res["ttft_ms"]["p99"],
        "total_p99_ms_1000": res["total_ms"]["p99"],
        "peak_rss_mib_1000": fig.get("peak_rss_mib"),
        "sut_cpu_s_1000": fig["sut_cpu_s"],
        "wall_s_1000": fig["wall_s"],
        "gen_core_busy_1000": fig["gen_core_busy"],
        "other_load_cores_1000": fig["other_load_cores"],
    }


#: scenario 6: a fast upstream, each answer 20 chunks 2 ms apart (40 ms a stream)
BURST_CHUNKS, BURST_GAP_MS = 20, 2.0

#: scenario 7: the same burst answered with one chunk, so a stream's cost is its start
#: alone (accept, request, upstream connect, first chunk, close); with 20 chunks the
#: relaying of early streams is about 35 % (meshkit) to 65 % (nginx) of the burst's CPU.
START_CHUNKS = 1


def scenario_6(system: System, bench: Bench) -> Figures:
    """A burst: N streams opened at the same instant, each on its own new connection.

    TTFT counts from each client's connect, so it holds the accept, the request's whole
    path through the system and its upstream connect: a system that spends long on each
    stream start makes the last of the burst wait for all the others.

    Every repetition meets the system as a burst after a quiet spell would: started
    afresh and warmed with a few streams, so no repetition inherits the upstream
    connections an earlier burst left in a gateway's keep-alive pool (meshkit keeps up
    to 1 024 for 30 s, nginx 128), and the repetitions measure the same case.
    """
    return _burst(system, bench, BURST_CHUNKS, "burst")


def scenario_7(system: System, bench: Bench) -> Figures:
    """Scenario 6's burst with one-chunk answers: the cost of N stream starts alone.

    This is the case issue 16 measured (each stream start queued behind the others);
    scenario 6's longer answers add the relaying of the first streams' chunks while
    the last ones are still starting.
    """
    return _burst(system, bench, START_CHUNKS, "burst1")


def _burst(system: System, bench: Bench, chunks: int, suffix: str) -> Figures:
    """One burst of ``bench.plan.burst`` streams of ``chunks`` chunks on a fresh system."""
    n = bench.plan.burst
    system.stop()
    system.start(bench.upstream_url)
    warm_streams(system, bench)
    with Meter(system, bench) as meter:
        res = loadgen(
            bench,
            system.chat_url,
            system.model,
            concurrency=n,
            requests=n,
            chunks=chunks,
            gap_ms=BURST_GAP_MS,
            deadline=60,
            timeout=120,
            extra=["--burst"],
        )
    fig = meter.figures
    sut = fig["sut_cpu_s"]
    if res["errors"] or res["complete"] != res["requests"]:
        print(
            f"[{system.name}] {suffix}: {res['complete']}/{res['requests']} complete, errors "
            f"{res['errors']}, first bad answer: {str(res['first_bad'])[:200]!r}",
            flush=True,
        )
    return {
        f"error_kinds_{suffix}": res["errors"],  # kept in the JSON, not summarised
        f"first_bad_{suffix}": res["first_bad"],
        f"streams_{suffix}": res["requests"],
        f"completed_{suffix}": res["complete"],
        f"in_order_{suffix}": res["in_order"],
        f"errors_{suffix}": sum(res["errors"].values()),
        f"ttft_p50_ms_{suffix}": res["ttft_ms"]["p50"],
        f"ttft_p99_ms_{suffix}": res["ttft_ms"]["p99"],
        f"ttft_max_ms_{suffix}": res["ttft_ms"]["max"],
        f"connect_p99_ms_{suffix}": res["connect_ms"]["p99"],
        f"start_spread_ms_{suffix}": res["start_spread_ms"],
        f"cpu_us_per_stream_{suffix}": sut * 1e6 / res["ok"]
        if sut is not None and res["ok"]
        else None,
        f"loadgen_cpu_ms_{suffix}": res["cpu_s"] * 1000.0,
        f"gen_core_busy_{suffix}": fig["gen_core_busy"],
        f"other_load_cores_{suffix}": fig["other_load_cores"],
    }


REAL_PROMPT = "Write four short sentences about the sea."


def scenario_4(system: System, bench: Bench) -> Figures:
    """Real local model behind the system: TTFT and tokens (events) per second."""
    res = loadgen(
        bench,
        system.chat_url,
        system.model,
        concurrency=1,
        requests=bench.plan.s4_streams,
        chunks=0,
        gap_ms=0,
        deadline=600,
        timeout=300,
        extra=["--prompt", REAL_PROMPT, "--max-tokens", "64"],
    )
    if res["errors"] or not res["ok"]:
        raise ScenarioError(f"real model: errors {res['errors']}: {res['first_bad']!r}")
    return {
        "ttft_p50_ms_real": res["ttft_ms"]["p50"],
        "ttft_p99_ms_real": res["ttft_ms"]["p99"],
        "tokens_per_s_real": res["events_per_s_p50"],
        "events_real": res["events"],
    }


# scenario id -> (warm-up, one repetition); scenario 5 is scenario 2 on the graph system
SCENARIOS: dict[
    str, tuple[Callable[[System, Bench], None] | None, Callable[[System, Bench], Figures]]
] = {
    "1": (warm_s1, scenario_1),
    "2": (warm_streams, scenario_2),
    "3": (warm_streams, scenario_3),
    "4": (None, scenario_4),
    "5": (warm_streams, scenario_2),
    "6": (None, scenario_6),  # restarts and warms the system before each burst
    "7": (None, scenario_7),  # likewise
}
