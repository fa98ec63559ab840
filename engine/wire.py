"""The wire format (camelCase JSON) of the engine's values, in one cattrs converter."""

from __future__ import annotations

import re
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from engine.models import ErrorInfo, Progress, StatusReport, Video

converter = cattrs.Converter()

_CAMEL = re.compile(r"_([a-z])")


def _camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def _register(cls: type, *, omit_if_default: bool = False) -> None:
    import attrs

    names: dict[str, Any] = {a.name: override(rename=_camel(a.name)) for a in attrs.fields(cls)}
    converter.register_unstructure_hook(
        cls,
        make_dict_unstructure_fn(cls, converter, _cattrs_omit_if_default=omit_if_default, **names),
    )
    converter.register_structure_hook(cls, make_dict_structure_fn(cls, converter, **names))


for _cls in (Video, ErrorInfo, Progress):
    _register(_cls)


def video_to_json(video: Video) -> dict[str, Any]:
    out: dict[str, Any] = converter.unstructure(video)
    return out


def video_from_json(obj: Any) -> Video:
    return converter.structure(obj, Video)


def error_to_json(error: ErrorInfo) -> dict[str, Any]:
    out: dict[str, Any] = converter.unstructure(error)
    return out


def error_from_json(obj: Any) -> ErrorInfo:
    return converter.structure(obj, ErrorInfo)


def progress_to_json(progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = converter.unstructure(progress)
    return out


def status_to_json(report: StatusReport) -> dict[str, Any]:
    """The seed's status body, plus ``error`` when the execution failed or was cancelled."""
    body: dict[str, Any] = {
        "status": report.status,
        "progress": report.progress,
        "totalJobs": report.total_jobs,
        "completedJobs": report.completed_jobs,
        "currentJob": report.current_job,
        "result": None if report.result is None else video_to_json(report.result),
    }
    if report.error is not None:
        body["error"] = error_to_json(report.error)
    return body


def status_from_json(obj: Any) -> StatusReport:
    return StatusReport(
        status=obj["status"],
        progress=obj["progress"],
        total_jobs=obj["totalJobs"],
        completed_jobs=obj["completedJobs"],
        current_job=obj.get("currentJob"),
        result=None if obj.get("result") is None else video_from_json(obj["result"]),
        error=None if obj.get("error") is None else error_from_json(obj["error"]),
    )
