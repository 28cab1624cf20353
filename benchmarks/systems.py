"""Systems under test: how each is started from a clean state, probed and stopped.

Every system relays ``POST /v1/chat/completions`` to an OpenAI-compatible upstream
given as a base URL without ``/v1``. Each runs pinned to the SUT core, in its own
session (process group) with its own temporary folder, logs into that folder, and is
stopped by the harness (SIGTERM to the group, SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml
from aiohttp import __version__ as aiohttp_version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"
API_KEY = "sk-bench"  # sent by every client; LiteLLM's master key, ignored by the others
MODEL = "bench"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Poll ``url`` until it answers 200; raise if ``alive()`` turns false or on timeout."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"exited before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


@dataclass
class Proc:
    """A child process pinned to one CPU, in its own process group."""

    argv: list[str]
    cpu: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process with its output in ``log``."""
        env = {**os.environ, **self.env}
        cpu = self.cpu
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the whole process group; kill it if it lingers."""
        if self.popen is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the leader may be gone while helpers it forked linger in the group
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen = None


class System:
    """Base class: a system under test relaying to an upstream."""

    name = "system"
    startup_timeout = 60.0

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.url = ""  # base URL, without /v1
        self.model = MODEL  # the model name clients ask for
        self.procs: list[Proc] = []
        self.workdir: Path | None = None

    @property
    def chat_url(self) -> str:
        """Full URL of the chat completions route."""
        return self.url + "/v1/chat/completions"

    def unavailable(self) -> str | None:
        """Why this system cannot run here, or None."""
        return None

    def version(self) -> str:
        """Version of the software under test."""
        return "-"

    def roots(self) -> list[int]:
        """PIDs whose process trees make up the system (for /proc accounting)."""
        return [p.pid for p in self.procs if p.alive()]

    def start(self, upstream: str) -> None:
        """Start from a clean state (a fresh temporary folder) and wait until ready."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        try:
            self._start(upstream, self.workdir)
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def _start(self, upstream: str, work: Path) -> None:
        raise NotImplementedError

    def _spawn(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        assert self.workdir is not None
        proc = Proc(argv, self.cpu, self.workdir / f"{self.name}.log", env or {}, cwd)
        proc.start()
        self.procs.append(proc)
        return proc

    def log_tail(self, lines: int = 15) -> str:
        """Last lines of the system's log, for error reports."""
        if self.workdir is None:
            return ""
        path = self.workdir / f"{self.name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every process and remove the temporary folder."""
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.workdir is not None and not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class Direct(System):
    """The client talks to the upstream itself: the limit."""

    name = "direct"

    def _start(self, upstream: str, work: Path) -> None:
        self.url = upstream


_NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream llm {{
        server {upstream_host}:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


class Nginx(System):
    """Debian's nginx as a reverse proxy: buffering off, upstream keep-alive."""

    name = "nginx"

    def unavailable(self) -> str | None:
        return None if shutil.which("nginx") else "nginx not installed (apt-get install nginx)"

    def version(self) -> str:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
        return out.stderr.strip().rpartition("/")[2]

    def _start(self, upstream: str, work: Path) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        listen = free_port()
        conf = work / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                work=work, upstream_host=host, upstream_port=port.rstrip("/") or "80", port=listen
            )
        )
        proc = self._spawn(
            [
                "nginx",
                "-c",
                str(conf),
                "-p",
                str(work),
                "-e",
                str(work / "err.log"),
                "-g",
                "user root;",
            ]
        )
        self.url = f"http://127.0.0.1:{listen}"
        wait_http(self.url + "/v1/models", self.startup_timeout, proc.alive)


class AiohttpFloor(System):
    """A bare aiohttp byte relay: what a Python gateway costs before any feature."""

    name = "aiohttp"

    def version(self) -> str:
        return aiohttp_version

    def _start(self, upstream: str, work: Path) -> None:
        listen = free_port()
        proc = self._spawn(
            [
                sys.executable,
                str(HERE / "aiohttp_floor.py"),
                "--port",
                str(listen),
                "--upstream",
                upstream,
            ]
        )
        self.url = f"http://127.0.0.1:{listen}"
        wait_http(self.url + "/v1/models", self.startup_timeout, proc.alive)


class LeanFloor(System):
    """A protocol-level relay on meshkit's own client (``lean_floor.py``): what a
    Python gateway with a lean server side costs before any feature."""

    name = "lean-floor"

    def version(self) -> str:
        described = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"httptools {metadata.version('httptools')}, meshkit.client ({described})"

    def _start(self, upstream: str, work: Path) -> None:
        listen = free_port()
        path = os.environ.get("PYTHONPATH")
        # meshkit.client from this checkout, as the meshkit system imports it
        env = {"PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}
        proc = self._spawn(
            [
                sys.executable,
                str(HERE / "lean_floor.py"),
                "--port",
                str(listen),
                "--upstream",
                upstream,
            ],
            env=env,
            cwd=REPO,
        )
        self.url = f"http://127.0.0.1:{listen}"
        wait_http(self.url + "/v1/models", self.startup_timeout, proc.alive)


class Meshkit(System):
    """``meshkit serve <yaml>`` with the lead's env contract, run from a source tree.

    ``python -m meshkit`` with ``PYTHONPATH`` and the working folder set to ``code``,
    so each system imports exactly the tree it names: this checkout for ``meshkit``,
    a temporary worktree of another commit for ``meshkit@<sha>``. (The ``meshkit``
    console script would import whatever tree is installed editable instead.)
    """

    name = "meshkit"

    def __init__(
        self,
        cpu: int,
        yaml_path: Path,
        name: str = "meshkit",
        code: Path = REPO,
        needs: str = "",
    ) -> None:
        super().__init__(cpu)
        self.yaml_path = yaml_path
        self.name = name
        self.code = code
        self.needs = needs  # the spec feature the YAML relies on, named when it is refused

    def command(self) -> list[str]:
        """The ``meshkit`` command, importing ``self.code``."""
        if (self.code / "meshkit" / "__main__.py").exists():
            return [sys.executable, "-m", "meshkit"]
        # older trees without __main__.py still have the cli module
        return [sys.executable, "-c", "import sys; from meshkit.cli import main; sys.exit(main())"]

    def env(self) -> dict[str, str]:
        """Environment that makes Python import ``self.code`` first."""
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": str(self.code) + (os.pathsep + path if path else "")}

    def _run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command(), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, **self.env(), **(env or {})},
            cwd=self.code,
        )

    def unavailable(self) -> str | None:
        if not self.yaml_path.exists():
            return f"{self.yaml_path} does not exist"
        where = subprocess.run(
            [sys.executable, "-c", "import meshkit; print(meshkit.__file__)"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, **self.env()},
            cwd=self.code,
        )
        found = Path(where.stdout.strip() or "/nonexistent").resolve()
        if where.returncode != 0 or not found.is_relative_to(self.code.resolve()):
            why = where.stderr.strip().splitlines()[-1:] or [f"imports {found}"]
            return f"cannot import meshkit from {self.code}: {why[0]}"
        # the spec of this very tree must accept the YAML (same env as `serve`)
        check = self._run(
            "validate",
            str(self.yaml_path),
            env={"LLM_ENDPOINT": "http://127.0.0.1:9", "LLM_MODEL": MODEL, "MESHKIT_PORT": "8008"},
        )
        if check.returncode != 0:
            problems = " ".join(line.strip() for line in check.stderr.splitlines()[-3:])
            what = f"this meshkit's spec does not accept {self.needs}" if self.needs else ""
            return f"{what or 'the spec refuses the YAML'} (`meshkit validate`: {problems[-300:]})"
        return None

    def version(self) -> str:
        try:
            release = metadata.version("meshkit")
        except metadata.PackageNotFoundError:
            release = "?"
        described = subprocess.run(
            ["git", "-C", str(self.code), "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"{release} ({described or 'no git'})"

    def _start(self, upstream: str, work: Path) -> None:
        port = free_port()
        env = {
            **self.env(),
            "LLM_ENDPOINT": upstream,
            "LLM_MODEL": self.model,
            "MESHKIT_PORT": str(port),
        }
        proc = self._spawn([*self.command(), "serve", str(self.yaml_path)], env=env, cwd=self.code)
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/readyz", self.startup_timeout, proc.alive)


def yaml_variant(source: Path, target: Path, gateway: dict[str, object]) -> Path:
    """Write a copy of ``source`` with ``gateway`` keys set; return ``target``.

    ``${VAR}`` references are plain strings to YAML and survive the round trip; the
    comments do not (the copy is only for the benchmark).
    """
    raw = yaml.safe_load(source.read_text())
    raw.setdefault("gateway", {}).update(gateway)
    target.write_text(
        f"# generated by benchmarks/systems.py from {source}: gateway {gateway}\n"
        + yaml.safe_dump(raw, sort_keys=False)
    )
    return target


class Opea(System):
    """OPEA ``opea-comps`` megaservice with one remote LLM node (own virtualenv)."""

    name = "opea"
    python = VENVS / "opea" / "bin" / "python"

    def unavailable(self) -> str | None:
        return None if self.python.exists() else "no venv: run `bash benchmarks/setup.sh opea`"

    def version(self) -> str:
        return _venv_version(self.python, "opea-comps")

    def _start(self, upstream: str, work: Path) -> None:
        port = free_port()
        proc = self._spawn(
            [
                str(self.python),
                str(HERE / "opea_megaservice.py"),
                "--port",
                str(port),
                "--upstream",
                upstream,
            ],
            cwd=work,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/health", self.startup_timeout, proc.alive)


_LITELLM_CONF = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: sk-upstream
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
"""


class LiteLLM(System):
    """LiteLLM proxy (``litellm[proxy]``, own virtualenv), offline settings."""

    name = "litellm"
    startup_timeout = 120.0
    bin = VENVS / "litellm" / "bin"

    def unavailable(self) -> str | None:
        ok = (self.bin / "litellm").exists()
        return None if ok else "no venv: run `bash benchmarks/setup.sh litellm`"

    def version(self) -> str:
        return _venv_version(self.bin / "python", "litellm")

    def _start(self, upstream: str, work: Path) -> None:
        port = free_port()
        conf = work / "litellm.yaml"
        conf.write_text(_LITELLM_CONF.format(model=self.model, upstream=upstream, key=API_KEY))
        env = {"LITELLM_MASTER_KEY": API_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        proc = self._spawn(
            [
                str(self.bin / "litellm"),
                "--config",
                str(conf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            env=env,
            cwd=work,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/health/liveliness", self.startup_timeout, proc.alive)


def _venv_version(python: Path, dist: str) -> str:
    if not python.exists():
        return "not installed"
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def default_meshkit_yaml() -> Path:
    """The repo's ``services.yaml`` when it exists, else the benchmark's own one-node YAML."""
    root = REPO / "services.yaml"
    return root if root.exists() else HERE / "meshkit-chat.yaml"


def make(
    name: str,
    cpu: int,
    meshkit_yaml: Path | None = None,
    graph_yaml: Path | None = None,
    scratch: Path | None = None,
    baseline: Path | None = None,
) -> System:
    """Build the system called ``name``.

    ``scratch`` holds generated files (the ``meshkit-nometrics`` YAML); ``baseline``
    is the source tree behind a ``meshkit@<sha>`` system.
    """
    if name == "direct":
        return Direct(cpu)
    if name == "nginx":
        return Nginx(cpu)
    if name == "aiohttp":
        return AiohttpFloor(cpu)
    if name == "lean-floor":
        return LeanFloor(cpu)
    if name == "opea":
        return Opea(cpu)
    if name == "litellm":
        return LiteLLM(cpu)
    if name == "meshkit":
        return Meshkit(cpu, meshkit_yaml or default_meshkit_yaml())
    if name == "meshkit-graph":
        return Meshkit(cpu, graph_yaml or HERE / "meshkit-graph.yaml", name="meshkit-graph")
    if name == "meshkit-nometrics":
        source = meshkit_yaml or default_meshkit_yaml()
        folder = scratch or Path(tempfile.mkdtemp(prefix="bench-yaml-"))
        target = folder / f"{source.stem}-nometrics.yaml"
        yaml_path = yaml_variant(source, target, {"metrics": False})
        return Meshkit(cpu, yaml_path, name=name, needs="gateway.metrics")
    if name.startswith("meshkit@"):
        if baseline is None:
            raise ValueError(f"{name}: no baseline source tree (use --baseline REF)")
        return Meshkit(cpu, meshkit_yaml or default_meshkit_yaml(), name=name, code=baseline)
    raise ValueError(f"unknown system {name!r}")


ALL = (
    "direct",
    "nginx",
    "aiohttp",
    "lean-floor",
    "meshkit",
    "meshkit-nometrics",
    "opea",
    "litellm",
)
