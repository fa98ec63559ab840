"""The ``videoflow`` command line: submit plans to a server, follow them, fetch their videos.

Remote commands (``submit``, ``status``, ``watch``, ``cancel``, ``resume``, ``get``) talk to the
HTTP API (``contrib.asgi``) through :class:`adapters.http.EngineClient`; they take ``--api-url``
and ``--api-key``, or ``VIDEOFLOW_API_URL`` and ``VIDEOFLOW_API_KEY``, and ``--json`` for
machine-readable output. ``serve``, ``worker`` and ``demo`` run ``contrib.serve``,
``contrib.worker`` and ``contrib.demo`` with the arguments that follow them.

Exit statuses (:mod:`contrib.cli.errors`): 0 done; 1 the execution failed or was cancelled (or,
for ``get``, has no video yet); 2 usage or configuration (a missing option, an unreadable or
invalid plan, an idempotency key reused with another plan); 3 the server said no or could not be
reached (unknown execution, API key refused, an action the execution's state does not allow,
a failed download). Errors are one line on stderr that says what to do.

Built on click (commands, options, environment variables) and rich (progress bars).
"""

from contrib.cli.commands import main, videoflow

__all__ = ["main", "videoflow"]
