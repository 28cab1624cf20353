"""Benchmark meshkit against direct, nginx, OPEA and LiteLLM: one command, one report.

    python benchmarks/run.py --setup            # once: peers' virtualenvs (+ nginx, wrk)
    python benchmarks/run.py --quick            # a few minutes
    python benchmarks/run.py                    # full run: >= 3 repetitions everywhere
    python benchmarks/run.py --systems direct,nginx --scenarios 1,2
    python benchmarks/run.py --systems direct,nginx,meshkit --baseline main   # before/after

The system under test is pinned to CPU 0, the fake upstream, the load generators and
this harness to CPU 1. Every system is started fresh for each scenario and stopped
after it; every load is bounded in count and time and targets 127.0.0.1 only. Results
go to ``benchmarks/results/<stamp>.{md,json}`` and ``latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import baseline
import report
import scenarios
import systems
from scenarios import Bench, Plan, ScenarioError
from systems import HERE, REPO, Proc, free_port, wait_http

SUT_CPU, GEN_CPU = 0, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    p.add_argument("--setup", action="store_true", help="create the peers' virtualenvs, exit")
    p.add_argument(
        "--check-upstream",
        action="store_true",
        help="check the fake upstream with the official openai client, exit",
    )
    p.add_argument("--quick", action="store_true", help="short durations, fewer repetitions")
    p.add_argument("--reps", type=int, default=None, help="repetitions per scenario")
    p.add_argument(
        "--systems",
        default=",".join(systems.ALL),
        help=f"comma-separated subset of {','.join(systems.ALL)} "
        "(direct is always added: the 'added' figures need it)",
    )
    p.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated subset of 1-7")
    p.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also run meshkit from git REF (a commit, branch or tag), checked out in a "
        "temporary worktree, as system meshkit@<sha> beside meshkit: before/after in one run",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=1000,
        metavar="N",
        help="scenarios 6 and 7: streams opened at the same instant (default 1000)",
    )
    p.add_argument(
        "--meshkit-yaml",
        type=Path,
        default=None,
        help="one-node pipeline for meshkit (default: ./services.yaml if it exists, "
        "else benchmarks/meshkit-chat.yaml)",
    )
    p.add_argument(
        "--graph-yaml",
        type=Path,
        default=HERE / "meshkit-graph.yaml",
        help="scenario 5: three-node graph YAML for meshkit (default: "
        "benchmarks/meshkit-graph.yaml; skipped when the file is missing)",
    )
    p.add_argument(
        "--llm-url",
        default=None,
        help="scenario 4: base URL (no /v1) of a running OpenAI-compatible server "
        "with the real local model; skipped without it",
    )
    p.add_argument("--llm-model", default="local", help="scenario 4: model name to ask for")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument(
        "--nice",
        type=int,
        default=-20,
        help="niceness of the harness and everything it starts (needs root to be "
        "negative; 0 = leave as is). A high priority keeps other work on the "
        "machine from skewing the figures",
    )
    return p.parse_args(argv)


def machine() -> str:
    """One line describing the machine."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions(chosen: list[systems.System]) -> dict[str, str]:
    """Versions of the tools and of every system in the run."""
    out = {"python": platform.python_version()}
    for dist in ("aiohttp", "uvloop", "orjson"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout or wrk.stderr).split()[1] if (wrk.stdout or wrk.stderr) else "?"
    for system in chosen:
        if system.name != "direct":
            out[system.name] = system.version()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    out["meshkit repo"] = commit or "?"
    return out


def start_upstream(scratch: Path) -> Proc:
    """Start the fake upstream on the generator core and wait for it."""
    port = free_port()
    proc = Proc(
        [sys.executable, str(HERE / "upstream.py"), "--port", str(port)],
        GEN_CPU,
        scratch / "upstream.log",
    )
    proc.start()
    wait_http(f"http://127.0.0.1:{port}/health", 30, proc.alive)
    proc.env["URL"] = f"http://127.0.0.1:{port}"
    return proc


def set_priority(nice: int) -> int:
    """Set this process's niceness (inherited by every child); return what it became."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except PermissionError:
            print(f"cannot set niceness {nice} (not root): running at normal priority")
    return os.getpriority(os.PRIO_PROCESS, 0)


def check_upstream() -> int:
    """Parse the fake upstream's answers with the official openai client."""
    try:
        import openai
    except ImportError:
        print("openai is not installed: pip install openai", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bench-check-"))
    up = start_upstream(scratch)
    try:
        client = openai.OpenAI(base_url=up.env["URL"] + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["bench"]
        done = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "chunks=5"}]
        )
        text = done.choices[0].message.content or ""
        assert text == "".join(f"s{i:05d}| " for i in range(5)), text
        stream = client.chat.completions.create(
            model="bench", stream=True, messages=[{"role": "user", "content": "chunks=64 gap_ms=1"}]
        )
        parts = [c.choices[0].delta.content for c in stream if c.choices]
        parts = [p for p in parts if p]
        assert parts == [f"s{i:05d}| " for i in range(64)], parts
        print(f"openai {openai.__version__}: models, JSON and a 64-chunk stream parse correctly")
        return 0
    finally:
        up.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def run_system(
    system: systems.System, ids: list[str], bench: Bench, upstream: str, results: dict[str, Any]
) -> None:
    """Run the chosen scenarios on one system, fresh for each scenario."""
    entry = results["systems"].setdefault(system.name, {"status": "ok", "scenarios": {}})
    entry["version"] = system.version() if system.name != "direct" else "-"
    for sid in ids:
        warm, once = scenarios.SCENARIOS[sid]
        reps = bench.plan.s3_reps if sid == "3" else bench.plan.reps
        print(f"[{system.name}] scenario {sid}: starting", flush=True)
        t0 = time.monotonic()
        record: dict[str, Any] = {"reps": [], "errors": []}
        entry["scenarios"][sid] = record
        try:
            system.start(upstream)
            if sid != "4":
                scenarios.probe(system, bench)
            if warm is not None:
                warm(system, bench)
            for rep in range(reps):
                try:
                    record["reps"].append(once(system, bench))
                except ScenarioError as exc:
                    record["errors"].append(f"rep {rep}: {exc}")
                    print(f"[{system.name}] scenario {sid} rep {rep}: {exc}", flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            tail = system.log_tail()
            record["errors"].append(f"{exc}\n{tail}")
            entry["status"] = f"failed in scenario {sid}: {str(exc).splitlines()[0]}"
            print(f"[{system.name}] scenario {sid} failed: {exc}\n{tail}", flush=True)
        finally:
            system.stop()
        record["summary"] = report.summarise(record["reps"])
        print(
            f"[{system.name}] scenario {sid}: {len(record['reps'])} reps in "
            f"{time.monotonic() - t0:.0f}s " + _brief(record["summary"]),
            flush=True,
        )


def run_rounds(
    chosen: list[systems.System], sid: str, bench: Bench, results: dict[str, Any]
) -> None:
    """Run scenario ``sid`` on every system in rounds: one repetition of each system in
    turn, the order rotating, so that drift on the machine, and where a system falls in
    the run, hit every system alike (run one system after another, the same meshkit tree
    measured 1.26x the CPU per stream and 1.32x the TTFT p99 of itself as the next
    system).

    Scenarios 1-3 keep every system up for the whole scenario (started, probed and
    warmed once; the idle ones wait on CPU ``SUT_CPU`` costing nothing). Scenarios 6 and 7
    restart their system before each repetition, so a system is only probed here and
    stopped after each of its repetitions.
    """
    warm, once = scenarios.SCENARIOS[sid]
    stay_up = sid not in ("6", "7")
    reps = bench.plan.s3_reps if sid == "3" else bench.plan.reps
    live: list[tuple[systems.System, dict[str, Any]]] = []
    t0 = time.monotonic()
    try:
        for system in chosen:
            entry = results["systems"].setdefault(system.name, {"status": "ok", "scenarios": {}})
            entry["version"] = system.version() if system.name != "direct" else "-"
            record: dict[str, Any] = {"reps": [], "errors": []}
            entry["scenarios"][sid] = record
            try:
                system.start(bench.upstream_url)
                scenarios.probe(system, bench)
                if stay_up and warm is not None:
                    warm(system, bench)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                _failed(system, sid, entry, record, exc)
                system.stop()
                continue
            if not stay_up:
                system.stop()
            live.append((system, record))
        print(f"scenario {sid}: {reps} rounds over {len(live)} systems", flush=True)
        for rep in range(reps):
            turn = rep % len(live) if live else 0
            for system, record in live[turn:] + live[:turn]:
                entry = results["systems"][system.name]
                if not entry["status"].startswith("ok"):
                    continue
                try:
                    record["reps"].append(once(system, bench))
                except ScenarioError as exc:
                    record["errors"].append(f"rep {rep}: {exc}")
                    print(f"[{system.name}] scenario {sid} rep {rep}: {exc}", flush=True)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    _failed(system, sid, entry, record, exc)
                    system.stop()
                finally:
                    if not stay_up:
                        system.stop()
    finally:
        for system, _ in live:
            system.stop()
    for system, record in live:
        record["summary"] = report.summarise(record["reps"])
        print(
            f"[{system.name}] scenario {sid}: {len(record['reps'])} reps in "
            f"{time.monotonic() - t0:.0f}s " + _brief(record["summary"]),
            flush=True,
        )


def _failed(
    system: systems.System, sid: str, entry: dict[str, Any], record: dict[str, Any], exc: Exception
) -> None:
    tail = system.log_tail()
    record["errors"].append(f"{exc}\n{tail}")
    entry["status"] = f"failed in scenario {sid}: {str(exc).splitlines()[0]}"
    print(f"[{system.name}] scenario {sid} failed: {exc}\n{tail}", flush=True)


def _brief(summary: report.Summary) -> str:
    keys = (
        "cpu_us_per_req_c32",
        "p50_ms_c1",
        "cpu_us_per_chunk_100",
        "ttft_p50_ms_1",
        "completed_1000",
        "ttft_p99_ms_1000",
        "peak_rss_mib_1000",
        "ttft_p50_ms_real",
        "completed_burst",
        "ttft_p99_ms_burst",
        "cpu_us_per_stream_burst",
    )
    return " ".join(f"{k}={summary[k]['median']:.3g}" for k in keys if k in summary)


def plan_systems(
    args: argparse.Namespace, ids: list[str], base: baseline.Baseline | None = None
) -> tuple[list[str], list[str]]:
    """Names of the systems to run, and notes on what the run leaves out."""
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*systems.ALL, "meshkit-graph")]
    if unknown:
        raise SystemExit(f"unknown systems: {unknown}; choose from {systems.ALL}")
    if "direct" not in names:
        names.insert(0, "direct")
    if base is not None:  # right after meshkit, so the tables put them side by side
        at = names.index("meshkit") + 1 if "meshkit" in names else len(names)
        names.insert(at, base.system)
    notes = []
    if "5" in ids:
        if args.graph_yaml is None or not args.graph_yaml.exists():
            notes.append(f"scenario 5 skipped: no three-node graph YAML ({args.graph_yaml})")
        elif "meshkit" in names and "meshkit-graph" not in names:
            names.append("meshkit-graph")
    if "4" in ids and not args.llm_url:
        notes.append("scenario 4 skipped: no --llm-url of a running real-model server given")
    return names, notes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    args = parse_args(argv)
    if args.setup:
        return subprocess.run(["bash", str(HERE / "setup.sh")], check=False).returncode
    os.sched_setaffinity(0, {GEN_CPU})
    niceness = set_priority(args.nice)
    if args.check_upstream:
        return check_upstream()
    if args.baseline is None:
        return run(args, niceness, None)
    with baseline.checkout(REPO, args.baseline) as base:
        print(f"baseline {base.system}: {args.baseline} = {base.sha[:12]} {base.subject}")
        print(f"  checked out in {base.tree} (removed at the end)", flush=True)
        return run(args, niceness, base)


def run(args: argparse.Namespace, niceness: int, base: baseline.Baseline | None) -> int:
    """Run the chosen systems and scenarios, then write the report."""
    ids = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    names, notes = plan_systems(args, ids, base)
    for note in notes:
        print(note, flush=True)
    plan = Plan.make(args.quick, args.reps, args.burst)
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    chosen = [
        systems.make(
            n,
            SUT_CPU,
            args.meshkit_yaml,
            args.graph_yaml,
            scratch=scratch,
            baseline=base.tree if base else None,
        )
        for n in names
    ]
    results: dict[str, Any] = {"order": names, "systems": {}, "notes": notes}
    if base is not None:
        results["baseline"] = {"ref": base.ref, "sha": base.sha, "subject": base.subject}
    upstream = start_upstream(scratch)
    started = time.monotonic()
    try:
        bench = Bench(upstream.env["URL"], upstream.pid, GEN_CPU, scratch, plan)
        relays: list[systems.System] = []
        for system in chosen:
            why = system.unavailable()
            if why:
                print(f"[{system.name}] skipped: {why}", flush=True)
                results["systems"][system.name] = {"status": f"skipped: {why}", "scenarios": {}}
                continue
            if system.name == "meshkit-graph":
                run_system(system, ["5"], bench, bench.upstream_url, results)
            else:
                relays.append(system)
        # Scenarios 1-3 and 6 run every system in rounds (the order bias of one system
        # after another reached 1.26x); the real model (4) one system after another.
        for sid in ("1", "2", "3"):
            if sid in ids and relays:
                run_rounds(relays, sid, bench, results)
        if "4" in ids and args.llm_url:
            for system in relays:
                if results["systems"][system.name]["status"].startswith("ok"):
                    system.model = args.llm_model
                    run_system(system, ["4"], bench, args.llm_url.rstrip("/"), results)
        for sid in ("6", "7"):
            if sid in ids and relays:
                run_rounds(relays, sid, bench, results)
    finally:
        upstream.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results["meta"] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "plan": f"{plan.reps} reps (scenario 3: {plan.s3_reps}), non-streaming runs of "
        f"{plan.s1_seconds:.0f}s, {plan.s2_ttft_streams} single streams, "
        f"{plan.s2_waves}x100 concurrent streams, a burst of {plan.burst}",
        "burst": plan.burst,
        "versions": versions(chosen),
        "duration_s": round(time.monotonic() - started),
        "cpus": {"sut": SUT_CPU, "upstream_and_generator": GEN_CPU},
        "niceness": niceness,
    }
    md_path = report.write(results, args.out, stamp)[1]
    print(md_path.read_text())
    print(f"written: {md_path} and .json (and latest.*) in {results['meta']['duration_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
