"""Exit statuses, and the one-line errors the commands end with.

A :class:`CliError` is printed as ``error: <what is wrong>: <what to do>`` on stderr and exits
with its status; :func:`explain` turns the engine's errors (as ``EngineClient`` raises them from
the server's answers) into one.
"""

from __future__ import annotations

import click
import httpx

from adapters.http import TransportError, Unauthorized
from engine import (
    EngineError,
    IdempotencyConflict,
    InvalidState,
    PlanError,
    UnknownExecution,
)

#: The command did what was asked.
OK = 0
#: The execution ended ``failed`` or ``cancelled`` (``watch``, ``submit --wait``), or has no
#: video to download yet (``get``).
EXECUTION_FAILED = 1
#: A usage or configuration error: fix the command line, the environment or the plan file.
USAGE = 2
#: The server refused (unknown execution, API key refused, invalid state) or was unreachable, or
#: a download failed.
REMOTE = 3


class CliError(Exception):
    """Ends a command: :func:`contrib.cli.main` prints ``error: message`` on stderr (one line)
    and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split()))
        self.message = " ".join(message.split())
        self.exit_code = exit_code

    def show(self) -> None:
        click.echo(f"error: {self.message}", err=True)


def explain(exc: EngineError, api_url: str) -> CliError:
    """What the user should read for ``exc``, raised while talking to ``api_url``."""
    if isinstance(exc, Unauthorized):
        return CliError(
            f"the server at {api_url} refused the API key: check --api-key or VIDEOFLOW_API_KEY "
            "(the server's keys are in its ENGINE_API_KEYS)",
            REMOTE,
        )
    if isinstance(exc, UnknownExecution):
        return CliError(
            f"no execution {exc.execution_id!r} at {api_url}: check the id (an execution "
            "submitted with another tenant's API key is not visible)",
            REMOTE,
        )
    if isinstance(exc, TransportError):
        if isinstance(exc.__cause__, httpx.HTTPError):
            return CliError(
                f"cannot reach the server at {api_url} ({type(exc.__cause__).__name__}): is "
                "`videoflow serve` running there? check --api-url or VIDEOFLOW_API_URL",
                REMOTE,
            )
        return CliError(f"the server failed: {exc}: try again later", REMOTE)
    if isinstance(exc, PlanError):
        return CliError(f"the server refused the plan: {exc}: fix the plan file", USAGE)
    if isinstance(exc, IdempotencyConflict):
        return CliError(
            f"{exc}: use a new --idempotency-key for a different plan, or resend the same one",
            USAGE,
        )
    if isinstance(exc, InvalidState):
        return CliError(str(exc), REMOTE)
    return CliError(str(exc), REMOTE)
