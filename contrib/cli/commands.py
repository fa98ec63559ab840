"""The ``videoflow`` commands (click), one function each; see :mod:`contrib.cli` for the list and
the exit statuses."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import click

from adapters.http import EngineClient, TransportError
from contrib.cli.display import (
    WatchDisplay,
    describe,
    emit_json,
    reason,
    status_json,
    video_line,
)
from contrib.cli.download import default_name, fetch
from contrib.cli.errors import EXECUTION_FAILED, USAGE, CliError
from contrib.cli.remote import KEY_VARIABLE, URL_VARIABLE, Remote
from engine import StatusReport, Webhook
from engine.models import TERMINAL

F = TypeVar("F", bound=Callable[..., Any])

#: ``watch``: how many status requests in a row may fail to reach the server before giving up.
MAX_POLL_FAILURES = 5


def remote_options(command: F) -> F:
    """``--api-url``, ``--api-key`` (or their environment variables) and ``--json``."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
    )(command)
    command = click.option(
        "--api-key",
        envvar=KEY_VARIABLE,
        show_envvar=True,
        metavar="KEY",
        help="An API key of the server (Authorization: Bearer KEY).",
    )(command)
    command = click.option(
        "--api-url",
        envvar=URL_VARIABLE,
        show_envvar=True,
        metavar="URL",
        help="The server's base URL, such as http://127.0.0.1:8000.",
    )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def videoflow() -> None:
    """Run AI-video pipelines: submit plans to a videoflow server, follow them, fetch the videos.

    Exit statuses: 0 done; 1 the execution failed or was cancelled (get: no video yet); 2 usage
    or configuration error; 3 the server refused or could not be reached.
    """


# --- submit ---------------------------------------------------------------------------------------


def _read_plan(source: str) -> dict[str, Any]:
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(
            f"cannot read {name}: {exc.strerror or exc}: pass a plan JSON file, or - for stdin",
            USAGE,
        ) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{name} is not UTF-8 text: pass a plan JSON file", USAGE) from exc
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CliError(
            f"{name} is not JSON ({exc}): a plan is the body of POST /api/execute, "
            '{"jobs": [...]}',
            USAGE,
        ) from exc
    if not isinstance(body, dict):
        raise CliError(
            f"{name} holds a JSON {type(body).__name__}, not an object: "
            'a plan is {"jobs": [...]}',
            USAGE,
        )
    return body


@videoflow.command()
@click.argument("plan_file", metavar="FILE|-")
@click.option("--base", "base_id", metavar="ID", help="Run after this execution, from its video.")
@click.option("--webhook-url", metavar="URL", help="POST the outcome to this URL when it ends.")
@click.option("--webhook-secret", metavar="S", help="Sign the webhook with this secret.")
@click.option("--idempotency-key", metavar="K", help="Submitting again with K returns the same id.")
@click.option("--wait", is_flag=True, help="Show progress until it ends; print the video's URL.")
@remote_options
def submit(
    plan_file: str,
    base_id: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    idempotency_key: str | None,
    wait: bool,
    api_url: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Submit the plan in FILE (a JSON request body; - reads stdin); print the execution's id.

    The plan may hold "baseExecutionId" and "webhook": {"url", "secret"}; --base and
    --webhook-url/--webhook-secret override them.
    """
    if webhook_secret is not None and webhook_url is None:
        raise CliError("--webhook-secret needs --webhook-url", USAGE)
    body = _read_plan(plan_file)
    remote = Remote.resolve(api_url, api_key)
    if base_id is not None:
        body["baseExecutionId"] = base_id
    webhook = Webhook(webhook_url, webhook_secret) if webhook_url is not None else None

    async def action(client: EngineClient) -> tuple[str, StatusReport | None]:
        execution_id = await client.submit(body, webhook=webhook, idempotency_key=idempotency_key)
        if not wait:
            return execution_id, None
        if not as_json:
            click.echo(execution_id, err=True)
        return execution_id, await _follow(client, execution_id, show=None if as_json else "bar")

    execution_id, final = remote.run(action)
    if final is None:
        if as_json:
            emit_json({"executionId": execution_id})
        else:
            click.echo(execution_id)
        return
    _finish(execution_id, final, as_json=as_json, shown=False)


# --- status, watch --------------------------------------------------------------------------------


@videoflow.command()
@click.argument("execution_id", metavar="ID")
@remote_options
def status(execution_id: str, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Print where the execution ID stands (exit 0 whatever its status)."""
    remote = Remote.resolve(api_url, api_key)
    report = remote.run(lambda client: client.status(execution_id))
    if as_json:
        emit_json(status_json(execution_id, report))
        return
    click.echo(describe(execution_id, report))
    line = video_line(report)
    if line is not None:
        click.echo(line)
    if report.status in ("failed", "cancelled"):
        click.echo(f"reason: {reason(report)}")


@videoflow.command()
@click.argument("execution_id", metavar="ID")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=0.5,
    show_default=True,
    help="Seconds between status requests.",
)
@remote_options
def watch(
    execution_id: str,
    interval: float,
    api_url: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Show the execution's progress until it ends; print the video's URL.

    Exit 0 when it completed, 1 when it failed or was cancelled. With --json, one status body a
    line, for each change.
    """
    remote = Remote.resolve(api_url, api_key)
    final = remote.run(
        lambda client: _follow(
            client, execution_id, show="json" if as_json else "bar", interval=interval
        )
    )
    _finish(execution_id, final, as_json=as_json, shown=as_json)


async def _follow(
    client: EngineClient,
    execution_id: str,
    *,
    show: Literal["bar", "json"] | None,
    interval: float = 0.5,
) -> StatusReport:
    """Poll the status until the execution ends and return the last report; each change is
    drawn (``"bar"``), printed as a JSON line (``"json"``), or not shown (``None``)."""
    last: StatusReport | None = None
    failures = 0
    with contextlib.ExitStack() as stack:
        display = stack.enter_context(WatchDisplay(execution_id)) if show == "bar" else None
        while True:
            try:
                report = await client.status(execution_id)
            except TransportError:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise
                await anyio.sleep(min(5.0, interval * 2**failures))
                continue
            failures = 0
            if display is not None:
                display.update(report)
            elif show == "json" and report != last:
                emit_json(status_json(execution_id, report))
            last = report
            if report.status in TERMINAL:
                return report
            await anyio.sleep(interval)


def _finish(execution_id: str, report: StatusReport, *, as_json: bool, shown: bool) -> None:
    """The end of ``watch`` and ``submit --wait``: the video's URL, or why not (exit 1).
    With ``as_json`` the final status body (unless ``shown`` already), and the same exit."""
    if as_json:
        if not shown:
            emit_json(status_json(execution_id, report))
        if report.status != "completed":
            sys.exit(EXECUTION_FAILED)
        return
    if report.status == "completed":
        if report.result is not None:
            click.echo(report.result.url)
        return
    hint = (
        f"`videoflow resume {execution_id}` runs it again from there"
        if report.status in ("failed", "cancelled")
        else "see `videoflow status`"
    )
    raise CliError(f"execution {execution_id} {reason(report)}: {hint}", EXECUTION_FAILED)


# --- cancel, resume -------------------------------------------------------------------------------


@videoflow.command()
@click.argument("execution_id", metavar="ID")
@remote_options
def cancel(execution_id: str, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Cancel the execution ID: its pending jobs will not run."""
    _act(execution_id, Remote.resolve(api_url, api_key), "cancel", as_json)


@videoflow.command()
@click.argument("execution_id", metavar="ID")
@remote_options
def resume(execution_id: str, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Run a failed or cancelled execution again from where it stopped."""
    _act(execution_id, Remote.resolve(api_url, api_key), "resume", as_json)


def _act(execution_id: str, remote: Remote, verb: str, as_json: bool) -> None:
    async def action(client: EngineClient) -> StatusReport:
        await (client.cancel if verb == "cancel" else client.resume)(execution_id)
        return await client.status(execution_id)

    report = remote.run(action)
    if as_json:
        emit_json(status_json(execution_id, report))
    else:
        done = "cancel requested" if verb == "cancel" else "resumed"
        click.echo(f"{done}: {describe(execution_id, report)}")


# --- get ------------------------------------------------------------------------------------------


@videoflow.command()
@click.argument("execution_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the video (default: ID.mp4 here).",
)
@remote_options
def get(
    execution_id: str,
    output: Path | None,
    api_url: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Download the video of the completed execution ID to a local file."""
    remote = Remote.resolve(api_url, api_key)
    report = remote.run(lambda client: client.status(execution_id))
    if report.status != "completed" or report.result is None:
        if report.status in ("failed", "cancelled"):
            why = f"no video: it {reason(report)}"
        else:
            why = f"no video yet ({describe(execution_id, report)}): `videoflow watch` waits"
        raise CliError(f"execution {execution_id} has {why}", EXECUTION_FAILED)
    url = report.result.url
    destination = output or default_name(execution_id, url)
    size = anyio.run(fetch, url, destination)
    if as_json:
        emit_json(
            {"executionId": execution_id, "url": url, "path": str(destination), "bytes": size}
        )
    else:
        click.echo(f"{destination}  ({size} bytes)")


# --- serve, worker, demo --------------------------------------------------------------------------

_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}


@videoflow.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Serve the HTTP API (python -m contrib.serve ARGS; --help for its options)."""
    try:
        from contrib.serve import main as serve_main
    except ImportError as exc:
        raise CliError(f"{exc}", USAGE) from exc
    serve_main(list(args))


@videoflow.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args: tuple[str, ...]) -> None:
    """Run jobs of a PostgreSQL fleet (python -m contrib.worker ARGS; --help for its options)."""
    try:
        from contrib.worker import main as worker_main
    except ImportError as exc:
        raise CliError(f"{exc}", USAGE) from exc
    worker_main(list(args))


@videoflow.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the seed's Example 1 for real (python -m contrib.demo ARGS: --fake, --out DIR)."""
    from contrib import demo as demo_module

    sys.argv = ["videoflow demo", *args]
    demo_module.cli()


def main() -> None:
    """The console script: click parses and runs the command; a :class:`CliError` ends it with
    its one line on stderr and its exit status."""
    try:
        videoflow(prog_name="videoflow")
    except CliError as exc:
        exc.show()
        sys.exit(exc.exit_code)
