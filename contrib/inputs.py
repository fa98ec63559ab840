"""Which URLs a tenant may name over HTTP: ``http(s)`` only, unless the server allows local dirs.

A plan's URL parameters (the catalogue's ``ParamSpec.url``: ``audioUrl``, ``srtUrl``) are read by
the provider on the server. Over HTTP they must be ``http(s)://`` URLs (which the provider fetches
behind its SSRF guard): a ``file://`` URL would let one tenant name a file of the server, or of
another tenant. A server run for one trusted tenant may list local directories
(``--allow-input-dir DIR``, ``create_app(input_dirs=...)``): then a ``file://`` URL whose path,
with symlinks resolved, lies under one of them is accepted too. The provider checks again where
it reads (it never reads its output directory by name), so this check is the first guard, not
the only one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from engine.catalogue import OPERATIONS
from engine.errors import Problem

#: The URL parameters of each job type.
URL_PARAMS: Mapping[str, tuple[str, ...]] = {
    spec.type: tuple(param.name for param in spec.params if param.url)
    for spec in OPERATIONS.values()
}
_REMOTE = ("http", "https")


def allowed_dirs(dirs: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    """The directories as absolute paths with symlinks resolved."""
    if isinstance(dirs, str | os.PathLike):
        raise TypeError("input_dirs must be a sequence of directories, not one path")
    return tuple(Path(d).resolve() for d in dirs)


def url_problems(plan: Any, input_dirs: Sequence[Path]) -> list[Problem]:
    """A problem for each URL parameter of ``plan`` (a request body) that is not ``http(s)`` and
    not a ``file://`` URL under ``input_dirs``. Values that are not strings, or plans that are not
    shaped as plans, are left to the plan checks."""
    if not isinstance(plan, Mapping) or not isinstance(plan.get("jobs"), list):
        return []
    problems: list[Problem] = []
    for job in plan["jobs"]:
        if not isinstance(job, Mapping) or not isinstance(job.get("params"), Mapping):
            continue
        job_id = job.get("id") if isinstance(job.get("id"), str) else None
        kind = job.get("type")
        for name in URL_PARAMS.get(kind, ()) if isinstance(kind, str) else ():
            value = job["params"].get(name)
            if isinstance(value, str):
                message = _refusal(value, input_dirs)
                if message is not None:
                    problems.append(Problem(job_id, f"params.{name}", message))
    return problems


def _refusal(url: str, input_dirs: Sequence[Path]) -> str | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None  # the plan checks say what is wrong with it
    scheme = parts.scheme.lower()
    if scheme in _REMOTE:
        return None
    if scheme != "file":
        return None  # not a URL scheme the plan checks accept at all
    if not input_dirs:
        return (
            "file:// URLs are not accepted over HTTP; send an http(s):// URL the server can "
            "download (a server for one trusted tenant can allow local directories with "
            "--allow-input-dir DIR)"
        )
    path = _local_path(parts.netloc, parts.path)
    if path is None or not any(path.is_relative_to(d) for d in input_dirs):
        return (
            "file:// URLs are accepted over HTTP only under the server's --allow-input-dir "
            "directories; send an http(s):// URL, or a file:// URL under one of them"
        )
    return None


def _local_path(host: str, raw_path: str) -> Path | None:
    if host.lower() not in ("", "localhost"):
        return None
    text = unquote(raw_path)
    if "\x00" in text or not text.startswith("/"):
        return None
    try:
        return Path(text).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


__all__ = ["URL_PARAMS", "allowed_dirs", "url_problems"]
