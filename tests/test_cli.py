"""The ``videoflow`` command, each call a real subprocess (``python -m contrib.cli``), against a
real server started by ``videoflow serve`` (SQLite, the ``cli_provider`` test provider whose
results a loopback file server in this module serves over HTTP)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from attrs import define, field
from cli_provider import SIZE, content

from contrib.cli.download import fetch
from contrib.cli.errors import REMOTE, CliError
from engine import verify_webhook

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
KEY = "cli-key"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EXECUTION_ID = re.compile(r"^exec_\w+$")


# --- the servers ----------------------------------------------------------------------------------


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@define
class Hooks:
    """Webhook deliveries a loopback receiver got: (path, headers, body)."""

    received: list[tuple[str, dict[str, str], bytes]] = field(factory=list)
    arrived: threading.Condition = field(factory=threading.Condition)

    def wait_for(self, path: str, timeout: float = 20) -> tuple[dict[str, str], bytes]:
        with self.arrived:
            found = self.arrived.wait_for(
                lambda: any(p == path for p, _, _ in self.received), timeout
            )
        assert found, f"no webhook at {path}: {self.received}"
        return next((h, b) for p, h, b in self.received if p == path)


def _thread_server(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def files(media: Path) -> Iterator[str]:
    """A file server over ``media``: where the provider's results are fetched from."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(media)))
    yield from _thread_server(server)


@pytest.fixture(scope="module")
def hooks() -> Iterator[tuple[str, Hooks]]:
    """A webhook receiver on loopback; yields its base URL and what it got."""
    got = Hooks()

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with got.arrived:
                got.received.append((self.path, dict(self.headers.items()), body))
                got.arrived.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
    for url in _thread_server(server):
        yield url, got


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, media: Path, files: str) -> Iterator[str]:
    """``videoflow serve --db ... --provider cli_provider:ServedFiles`` on a free port; its URL.
    Stopped with SIGTERM at the end, which must exit 0 without a traceback."""
    db = tmp_path_factory.mktemp("db") / "engine.db"
    command = [sys.executable, "-m", "contrib.cli", "serve", "--db", str(db), "--port", "0"]
    command += ["--provider", "cli_provider:ServedFiles", "--no-access-log"]
    command += ["--allow-webhook-network", "127.0.0.0/8", "--output-dir", str(media)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "ENGINE_API_KEYS": f"{KEY}=tenant-a,other-key=tenant-b",
        "CLI_TEST_MEDIA": str(media),
        "CLI_TEST_MEDIA_URL": files,
        "CLI_TEST_LATENCY": "1.0",
    }
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines: list[str] = []
    listening = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"serving .* on (http://\S+)", line)
            if match:
                url.append(match[1])
                listening.set()
        listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(30) and url, "".join(lines)
        yield url[0]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        reader.join(5)
        if process.stderr is not None:
            process.stderr.close()
    log = "".join(lines)
    assert code == 0, log
    assert "Traceback" not in log, log


# --- running the command --------------------------------------------------------------------------


def cli_env(api: str | None, key: str | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The command's environment: ``VIDEOFLOW_API_URL``/``VIDEOFLOW_API_KEY`` set to
    ``api``/``key`` (unset when ``None``), no terminal hints unless ``env`` gives them."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIDEOFLOW_", "TTY_", "FORCE_COLOR", "NO_COLOR"))
    }
    base.update({"PYTHONPATH": str(ROOT), "COLUMNS": "160"})
    if api is not None:
        base["VIDEOFLOW_API_URL"] = api
    if key is not None:
        base["VIDEOFLOW_API_KEY"] = key
    base.update(env or {})
    return base


def videoflow(
    *args: str,
    api: str | None = None,
    key: str | None = KEY,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m contrib.cli ARGS`` (see :func:`cli_env`); never a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "contrib.cli", *args],
        env=cli_env(api, key, env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=cwd or ROOT,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr, ``error: ...``; that line."""
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def json_lines(text: str) -> list[dict[str, Any]]:
    documents = [json.loads(line) for line in text.splitlines()]
    assert documents and all(isinstance(d, dict) for d in documents)
    return documents


def submit(api: str, plan: dict[str, Any] | Path, *args: str) -> str:
    """Submit ``plan`` (a file, or a body sent on stdin); the new execution's id."""
    if isinstance(plan, Path):
        result = videoflow("submit", str(plan), *args, api=api)
    else:
        result = videoflow("submit", "-", *args, api=api, stdin=json.dumps(plan))
    assert result.returncode == 0, result.stderr
    execution_id = result.stdout.strip()
    assert EXECUTION_ID.match(execution_id), result.stdout
    return execution_id


def one_job(prompt: str) -> dict[str, Any]:
    return {"jobs": [{"id": "a", "type": "generate", "params": {"prompt": prompt}}]}


# --- the tests ------------------------------------------------------------------------------------


def test_submit_watch_status_get(api: str, files: str, media: Path, tmp_path: Path) -> None:
    gate = f"gate-{uuid.uuid4().hex}"
    plan = json.loads((EXAMPLES / "product_demo.json").read_text())
    plan["jobs"][0]["params"]["prompt"] = f"Scene 1 gate:{gate}"
    execution_id = submit(api, plan)

    # watch while job1 waits at its gate, then open it: the progress moves on to the end.
    command = [sys.executable, "-m", "contrib.cli", "watch", execution_id, "--interval", "0.05"]
    with subprocess.Popen(
        command,
        env=cli_env(api, KEY),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watching:
        assert watching.stderr is not None
        first = watching.stderr.readline()
        (media / gate).touch()
        rest, errors = watching.communicate(timeout=60)
    assert watching.returncode == 0, first + errors
    url = f"{files}/{execution_id}-job4.mp4"
    assert rest.strip() == url
    # Not a terminal: one plain line for each change, the last one the end.
    progress = [first.rstrip("\n"), *errors.splitlines()]
    waiting = rf"{execution_id}  processing  [0-2]/4 jobs  \d+%  running job\d"
    assert re.fullmatch(waiting, progress[0]), progress
    assert progress[-1] == f"{execution_id}  completed  4/4 jobs  100%"
    assert len(progress) == len(set(progress)), progress
    counts = [int(m[1]) for m in (re.search(r"  (\d)/4 jobs", p) for p in progress) if m]
    assert counts == sorted(counts) and len(counts) == len(progress)

    shown = videoflow("status", execution_id, api=api)
    assert shown.returncode == 0
    assert shown.stdout.splitlines() == [
        f"{execution_id}  completed  4/4 jobs  100%",
        f"video: {url}  (9s, 1280x720, 16:9)",
    ]
    body = json_lines(videoflow("status", execution_id, "--json", api=api).stdout)
    assert body == [
        {
            "executionId": execution_id,
            "status": "completed",
            "progress": 100.0,
            "totalJobs": 4,
            "completedJobs": 4,
            "currentJob": None,
            "result": {
                "url": url,
                "duration": 9.0,
                "aspectRatio": "16:9",
                "width": 1280,
                "height": 720,
                "status": "completed",
            },
        }
    ]

    # get: ID.mp4 in the current directory, a progress bar on stderr, the bytes served.
    got = videoflow("get", execution_id, api=api, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    saved = tmp_path / f"{execution_id}.mp4"
    assert got.stdout.strip() == f"{saved.name}  ({SIZE} bytes)"
    assert saved.read_bytes() == content(f"{execution_id}-job4.mp4")
    assert "200.0/200.0 kB" in got.stderr
    assert list(tmp_path.iterdir()) == [saved]  # no .part left behind

    target = tmp_path / "sub.mp4"
    got = videoflow("get", execution_id, "-o", str(target), "--json", api=api)
    assert got.returncode == 0, got.stderr
    assert json_lines(got.stdout) == [
        {"executionId": execution_id, "url": url, "path": str(target), "bytes": SIZE}
    ]
    assert target.read_bytes() == saved.read_bytes()


def test_watch_draws_a_bar_on_a_terminal(api: str) -> None:
    execution_id = submit(api, EXAMPLES / "product_demo.json")
    terminal = {"TTY_INTERACTIVE": "1", "TTY_COMPATIBLE": "1"}
    watched = videoflow("watch", execution_id, api=api, env=terminal)
    assert watched.returncode == 0, watched.stderr
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", watched.stderr)
    final = [line for line in re.split(r"[\r\n]", drawn) if line.strip()][-1]
    assert "━" in final and "4/4 jobs" in final and "100%" in final and "completed" in final
    assert execution_id in final
    assert watched.stdout.strip().endswith(f"{execution_id}-job4.mp4")


def test_watch_json_prints_each_change_once(api: str) -> None:
    execution_id = submit(api, one_job("x"))
    watched = videoflow("watch", execution_id, "--json", "--interval", "0.05", api=api)
    assert watched.returncode == 0, watched.stderr
    lines = json_lines(watched.stdout)
    assert all(line["executionId"] == execution_id for line in lines)
    assert lines[-1]["status"] == "completed" and lines[-1]["result"]["url"].endswith("-a.mp4")
    assert all(a != b for a, b in itertools.pairwise(lines))
    assert watched.stderr == ""


def test_submit_wait_with_a_base_and_a_webhook(api: str, hooks: tuple[str, Hooks]) -> None:
    hooks_url, received = hooks
    base = videoflow("submit", str(EXAMPLES / "product_demo.json"), "--wait", api=api)
    assert base.returncode == 0, base.stderr
    base_id = base.stderr.splitlines()[0]
    assert EXECUTION_ID.match(base_id)
    assert base.stdout.strip().endswith(f"/{base_id}-job4.mp4")

    french = videoflow(
        "submit",
        str(EXAMPLES / "french.json"),
        "--base",
        base_id,
        "--webhook-url",
        f"{hooks_url}/french",
        "--webhook-secret",
        SECRET,
        "--wait",
        "--json",
        api=api,
    )
    assert french.returncode == 0, french.stderr
    [final] = json_lines(french.stdout)
    assert final["status"] == "completed" and final["totalJobs"] == 2
    assert final["result"]["url"].endswith(f"/{final['executionId']}-job2.mp4")
    assert final["result"]["duration"] == 9.0  # lipSync and addSubtitles keep the base's

    headers, body = received.wait_for("/french")
    payload = verify_webhook(body, headers, SECRET)
    assert payload["executionId"] == final["executionId"]
    assert payload["status"] == "completed"


def test_submit_from_stdin_with_an_idempotency_key(api: str) -> None:
    plan = json.dumps(one_job("same"))
    first = videoflow("submit", "-", "--idempotency-key", "k-1", "--json", api=api, stdin=plan)
    again = videoflow("submit", "-", "--idempotency-key", "k-1", "--json", api=api, stdin=plan)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    [a], [b] = json_lines(first.stdout), json_lines(again.stdout)
    assert a == b and EXECUTION_ID.match(a["executionId"])
    other = videoflow(
        "submit", "-", "--idempotency-key", "k-1", api=api, stdin=json.dumps(one_job("other"))
    )
    assert other.returncode == 2
    assert "--idempotency-key" in one_error_line(other)


def test_a_failure_exits_1_and_resume_finishes_it(api: str) -> None:
    execution_id = submit(api, one_job("fail-once"))
    watched = videoflow("watch", execution_id, api=api)
    assert watched.returncode == 1
    error = watched.stderr.splitlines()[-1]
    assert error.startswith(f"error: execution {execution_id} failed at job a: ")
    assert "fail-once" in error and f"videoflow resume {execution_id}" in error
    as_json = videoflow("watch", execution_id, "--json", api=api)
    assert as_json.returncode == 1 and as_json.stderr == ""
    [ended] = json_lines(as_json.stdout)
    assert ended["status"] == "failed" and ended["error"]["jobId"] == "a"
    shown = videoflow("status", execution_id, api=api)
    assert shown.returncode == 0 and "reason: failed at job a: " in shown.stdout
    missing = videoflow("get", execution_id, api=api)
    assert missing.returncode == 1 and "no video" in one_error_line(missing)

    resumed = videoflow("resume", execution_id, "--json", api=api)
    assert resumed.returncode == 0, resumed.stderr
    [after] = json_lines(resumed.stdout)
    assert after["executionId"] == execution_id and after["status"] in ("pending", "processing")
    watched = videoflow("watch", execution_id, api=api)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip().endswith(f"{execution_id}-a.mp4")

    again = videoflow("resume", execution_id, api=api)
    assert again.returncode == 3
    assert "completed" in one_error_line(again)


def test_cancel_then_watch_exits_1(api: str) -> None:
    execution_id = submit(api, one_job("slow"))
    busy = videoflow("get", execution_id, api=api)
    assert busy.returncode == 1 and "no video yet" in one_error_line(busy)
    cancelled = videoflow("cancel", execution_id, api=api)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"cancel requested: {execution_id}  ")
    watched = videoflow("watch", execution_id, api=api)
    assert watched.returncode == 1
    assert watched.stderr.splitlines() == [
        f"{execution_id}  cancelled  0/1 jobs  0%",
        f"error: execution {execution_id} cancelled: cancelled by request: "
        f"`videoflow resume {execution_id}` runs it again from there",
    ]
    [body] = json_lines(videoflow("status", execution_id, "--json", api=api).stdout)
    assert body["status"] == "cancelled"
    # Cancelling an ended execution changes nothing (the engine's cancel is a no-op then).
    again = videoflow("cancel", execution_id, "--json", api=api)
    assert again.returncode == 0, again.stderr
    assert json_lines(again.stdout) == [body]


def test_get_downloads_a_file_result_through_its_signed_link(
    api: str, media: Path, tmp_path: Path
) -> None:
    execution_id = submit(api, one_job("file: local"))
    assert videoflow("watch", execution_id, api=api).returncode == 0
    [body] = json_lines(videoflow("status", execution_id, "--json", api=api).stdout)
    url = body["result"]["url"]
    # The server's file:// result is shown as its own signed link, never as the path.
    assert url.startswith(f"{api}/results/{execution_id}-a.mp4?execution={execution_id}&")
    assert "sig=" in url and str(media) not in url
    got = videoflow("get", execution_id, "-o", str(tmp_path / "copy.mp4"), api=api)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "copy.mp4").read_bytes() == content(f"{execution_id}-a.mp4")
    assert "200.0/200.0 kB" in got.stderr


def test_configuration_errors_exit_2(api: str, tmp_path: Path) -> None:
    plan = str(EXAMPLES / "product_demo.json")
    no_url = videoflow("status", "exec_x")
    assert no_url.returncode == 2
    assert one_error_line(no_url) == "error: no API URL: pass --api-url or set VIDEOFLOW_API_URL"
    no_key = videoflow("submit", plan, api=api, key=None)
    assert no_key.returncode == 2
    assert one_error_line(no_key) == "error: no API key: pass --api-key or set VIDEOFLOW_API_KEY"
    not_http = videoflow("status", "exec_x", "--api-url", "127.0.0.1:8000")
    assert not_http.returncode == 2 and "http(s)" in one_error_line(not_http)

    missing = videoflow("submit", str(tmp_path / "nope.json"), api=api)
    assert missing.returncode == 2 and "cannot read" in one_error_line(missing)
    (tmp_path / "bad.json").write_text("{not json")
    bad = videoflow("submit", str(tmp_path / "bad.json"), api=api)
    assert bad.returncode == 2 and "is not JSON" in one_error_line(bad)
    listed = videoflow("submit", "-", api=api, stdin="[1, 2]")
    assert listed.returncode == 2 and "not an object" in one_error_line(listed)
    invalid = videoflow("submit", "-", api=api, stdin=json.dumps({"jobs": [{}]}))
    assert invalid.returncode == 2
    assert "the server refused the plan: invalid plan" in one_error_line(invalid)
    secret_alone = videoflow("submit", plan, "--webhook-secret", "s", api=api)
    assert secret_alone.returncode == 2
    assert one_error_line(secret_alone) == "error: --webhook-secret needs --webhook-url"
    unknown_option = videoflow("status", "--nope", api=api)
    assert unknown_option.returncode == 2


def test_remote_errors_exit_3(api: str) -> None:
    for command in ("status", "watch", "cancel", "resume", "get"):
        unknown = videoflow(command, "exec_missing", api=api)
        assert unknown.returncode == 3, (command, unknown.stderr)
        assert one_error_line(unknown).startswith("error: no execution 'exec_missing' at ")
    execution_id = submit(api, one_job("x"))
    other_tenant = videoflow("status", execution_id, api=api, key="other-key")
    assert other_tenant.returncode == 3
    assert "no execution" in one_error_line(other_tenant)

    refused = videoflow("status", execution_id, api=api, key="wrong-key")
    assert refused.returncode == 3
    assert one_error_line(refused) == (
        f"error: the server at {api} refused the API key: check --api-key or "
        "VIDEOFLOW_API_KEY (the server's keys are in its ENGINE_API_KEYS)"
    )
    refused = videoflow("submit", str(EXAMPLES / "product_demo.json"), api=api, key="wrong")
    assert refused.returncode == 3 and "refused the API key" in one_error_line(refused)

    with socket_closed_port() as port:
        away = videoflow("status", execution_id, api=f"http://127.0.0.1:{port}")
    assert away.returncode == 3
    assert "cannot reach the server" in one_error_line(away)


class socket_closed_port:
    """A loopback port nothing listens on (bound, never listening, while the block runs)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        port: int = self._socket.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


def test_fake_results_cannot_be_downloaded() -> None:
    # The fake provider's URLs are not fetchable: `get` says so and how to serve real ones.
    with pytest.raises(CliError) as raised:
        anyio.run(fetch, "fake://videos/exec_1/job4.mp4", Path("never.mp4"))
    assert raised.value.exit_code == REMOTE and "--provider ffmpeg" in raised.value.message
    assert not Path("never.mp4").exists()


def test_serve_worker_and_demo_pass_their_arguments_through(tmp_path: Path) -> None:
    served = videoflow("serve", "--help")
    assert served.returncode == 0 and "--provider SPEC" in served.stdout
    worked = videoflow("worker", "--help")
    assert worked.returncode == 0 and "--postgres DSN" in worked.stdout
    refused = videoflow("serve", "--db", str(tmp_path / "e.db"), env={"ENGINE_API_KEYS": ""})
    assert refused.returncode == 2 and "no API keys" in refused.stderr
    demo = videoflow("demo", "--fake", "--out", str(tmp_path / "out"))
    assert demo.returncode == 0, demo.stderr
    assert "Videos" in demo.stdout and "Webhooks received" in demo.stdout
    helped = videoflow("--help")
    assert helped.returncode == 0
    for command in ("submit", "status", "watch", "cancel", "resume", "get", "serve", "worker"):
        assert command in helped.stdout
