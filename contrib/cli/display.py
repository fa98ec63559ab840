"""What the commands print: status lines, the ``watch`` progress bar, the download bar.

Results go to stdout (an id, a URL, a path, or with ``--json`` one JSON document a line);
progress goes to stderr, drawn by rich: a live bar on a terminal, and on anything else (a pipe,
a CI log) one plain line per change, so that logs read well.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Self

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from engine import StatusReport


def progress_console() -> Console:
    """Where progress is drawn: stderr (so stdout stays the command's result)."""
    return Console(stderr=True, highlight=False)


def emit_json(document: Any) -> None:
    """One JSON document on one line of stdout."""
    click.echo(json.dumps(document, separators=(",", ":"), allow_nan=False))


def status_json(execution_id: str, report: StatusReport) -> dict[str, Any]:
    """The seed's status body with the execution's id first."""
    return {"executionId": execution_id, **report.to_json()}


def describe(execution_id: str, report: StatusReport) -> str:
    """One line: ``exec_1  processing  2/4 jobs  50%  running job3``."""
    line = (
        f"{execution_id}  {report.status}  {report.completed_jobs}/{report.total_jobs} jobs  "
        f"{report.progress:.0f}%"
    )
    if report.current_job and report.status not in ("completed", "failed", "cancelled"):
        line += f"  running {report.current_job}"
    return line


def video_line(report: StatusReport) -> str | None:
    video = report.result
    if video is None:
        return None
    return (
        f"video: {video.url}  ({video.duration:g}s, {video.width}x{video.height}, "
        f"{video.aspect_ratio})"
    )


def reason(report: StatusReport) -> str:
    """Why an execution failed or was cancelled, in one line."""
    error = report.error
    if error is None:
        return report.status
    where = f" at job {error.job_id}" if error.job_id else ""
    code = "" if error.code == report.status else f"{error.code}: "
    return f"{report.status}{where}: {code}{error.message}"


class WatchDisplay:
    """The progress of one execution, as reports come in: each change drawn once."""

    def __init__(self, execution_id: str, console: Console | None = None) -> None:
        self.execution_id = execution_id
        self.console = console or progress_console()
        self._last: StatusReport | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.console.is_interactive:
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓"),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("jobs"),
                TaskProgressColumn(),
                TextColumn("{task.fields[state]}"),
                TimeElapsedColumn(),
                console=self.console,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.execution_id, total=None, state="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, report: StatusReport) -> None:
        if report == self._last:
            return
        self._last = report
        if self._progress is None or self._task is None:
            self.console.print(describe(self.execution_id, report), soft_wrap=True)
            return
        state: str
        if report.status in ("completed", "failed", "cancelled"):
            state = report.status
        elif report.current_job:
            state = f"running {report.current_job}"
        else:
            state = report.status
        self._progress.update(
            self._task,
            total=max(report.total_jobs, 1),
            completed=report.completed_jobs,
            state=state,
        )


def download_progress(console: Console | None = None) -> Progress:
    """A bar for a download or a copy: bytes done of the total, speed, time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console or progress_console(),
    )
