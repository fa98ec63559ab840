"""``--provider SPEC``: which video provider a server or worker runs.

- ``fake`` (the default): ``adapters.memory.FakeVideoProvider``. Its results are not real
  videos (``fake://`` URLs), and loading it prints a warning saying so on stderr.
- ``ffmpeg``: ``adapters.ffmpeg.FFmpegVideoProvider(--output-dir, input_dirs=--input-dir)``:
  real MP4 files made by FFmpeg.
- ``http``: ``adapters.http.HttpVideoProvider``, a hosted model API over the queue protocol,
  configured by ``--provider-config FILE`` (JSON, or TOML when the name ends in ``.toml``) and
  the environment, which wins over the file:

  - ``base_url`` / ``VIDEOFLOW_HTTP_BASE_URL`` (required): the API's root URL;
  - ``models`` / ``VIDEOFLOW_HTTP_MODELS`` (required): wire type -> model path, a path or
    ``{"path", "queue_path"}`` in the file, ``generate=a/b,merge=c/d`` or a JSON object in the
    environment;
  - ``api_key`` / ``VIDEOFLOW_HTTP_API_KEY``: sent as ``Authorization: Key <key>``;
  - ``auth_scheme`` / ``VIDEOFLOW_HTTP_AUTH_SCHEME``: ``Key`` by default, ``""`` for a bare key;
  - in the file only: ``auth_header``, ``poll_interval``, ``max_poll_interval``, ``timeout``,
    ``max_retries``, ``request_timeout``, as ``HttpVideoProvider`` takes them.

  Keep the key out of the file: put it in the environment.
- ``module:attribute``: a provider object, or a zero-argument callable that returns one, named
  as uvicorn names an app (``myapp.providers:make_provider``). The module is imported from the
  current directory too.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine import ConfigError, VideoProvider

#: The names ``--provider`` takes besides ``module:attribute``.
NAMED = ("fake", "ffmpeg", "http")
#: The hosted models among them: their results are kept (``contrib.keep``) with ``--output-dir``.
HOSTED = frozenset({"http"})
#: What ``--provider fake`` prints on stderr.
FAKE_WARNING = (
    "warning: --provider fake: results are NOT real videos (fake:// URLs); "
    "use --provider ffmpeg --output-dir DIR, or http, for real ones"
)
_HTTP_ENV = {
    "base_url": "VIDEOFLOW_HTTP_BASE_URL",
    "api_key": "VIDEOFLOW_HTTP_API_KEY",
    "models": "VIDEOFLOW_HTTP_MODELS",
    "auth_scheme": "VIDEOFLOW_HTTP_AUTH_SCHEME",
}
_HTTP_NUMBERS = {
    "poll_interval": float,
    "max_poll_interval": float,
    "timeout": float,
    "max_retries": int,
    "request_timeout": float,
}
_HTTP_KEYS = {*_HTTP_ENV, "auth_header", *_HTTP_NUMBERS}


def load_provider(
    spec: str,
    *,
    output_dir: str | None = None,
    input_dirs: Sequence[str] = (),
    allowed_networks: Sequence[str] = (),
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> VideoProvider:
    """The provider ``spec`` names; :class:`ConfigError` saying what is wrong otherwise.

    ``config_file`` configures ``http`` (with ``environ``, default ``os.environ``).
    """
    if spec == "fake":
        from adapters.memory import FakeVideoProvider

        print(FAKE_WARNING, file=sys.stderr, flush=True)
        # No one can inspect a served fake's calls, and each would hold its job's params.
        return FakeVideoProvider(keep_calls=0)
    if spec == "http":
        return http_provider(config_file, os.environ if environ is None else environ)
    if spec == "ffmpeg":
        if output_dir is None:
            raise ConfigError("--provider ffmpeg needs --output-dir DIR (where videos are written)")
        try:
            from adapters.ffmpeg import FFmpegVideoProvider
        except ImportError as exc:
            raise ConfigError(
                f"--provider ffmpeg needs the ffmpeg extra: pip install "
                f"'videoflow-engine[ffmpeg]' ({exc})"
            ) from exc
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        return FFmpegVideoProvider(
            output_dir, input_dirs=tuple(input_dirs), allowed_networks=tuple(allowed_networks)
        )
    if ":" in spec:
        return _from_module(spec)
    raise ConfigError(
        f"unknown --provider {spec!r}: use {', '.join(NAMED)}, or module:attribute naming a "
        "provider object or a zero-argument callable that returns one"
    )


def http_settings(config_file: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of ``HttpVideoProvider`` from the file and the environment."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings = _read_config(config_file)
        unknown = sorted(set(settings) - _HTTP_KEYS)
        if unknown:
            raise ConfigError(
                f"{config_file}: unknown keys {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_HTTP_KEYS))}"
            )
    for key, variable in _HTTP_ENV.items():
        value = environ.get(variable)
        if value is not None:
            settings[key] = _models_from_env(value) if key == "models" else value
    for key in ("base_url", "models"):
        if not settings.get(key):
            raise ConfigError(
                f"--provider http needs {key}: set {_HTTP_ENV[key]} or put {key!r} in "
                "--provider-config FILE"
            )
    for key, kind in _HTTP_NUMBERS.items():
        if key in settings and (
            isinstance(settings[key], bool) or not isinstance(settings[key], int | float)
        ):
            raise ConfigError(f"--provider http: {key} must be a number of {kind.__name__}")
    return settings


def http_provider(config_file: str | None, environ: Mapping[str, str]) -> VideoProvider:
    """``--provider http``: see the module docstring."""
    from adapters.http import HttpVideoProvider, ModelRoute

    settings = http_settings(config_file, environ)
    models = settings.pop("models")
    if not isinstance(models, Mapping):
        raise ConfigError("--provider http: models must map wire types to model paths")
    routes: dict[str, ModelRoute | str] = {}
    for kind, route in models.items():
        if isinstance(route, str):
            routes[kind] = route
        elif isinstance(route, Mapping) and isinstance(route.get("path"), str):
            extra = sorted(set(route) - {"path", "queue_path"})
            if extra:
                raise ConfigError(f"--provider http: models.{kind} has unknown keys {extra}")
            routes[kind] = ModelRoute(route["path"], queue_path=route.get("queue_path"))
        else:
            raise ConfigError(
                f"--provider http: models.{kind} must be a path or {{path, queue_path}}"
            )
    return HttpVideoProvider(models=routes, **settings)


def _read_config(config_file: str) -> dict[str, Any]:
    try:
        with open(config_file, "rb") as handle:
            if config_file.endswith(".toml"):
                loaded: Any = tomllib.load(handle)
            else:
                loaded = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read --provider-config {config_file}: {exc}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--provider-config {config_file} is not valid: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"--provider-config {config_file} must hold an object of settings")
    return loaded


def _models_from_env(value: str) -> dict[str, Any]:
    if value.lstrip().startswith("{"):
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"VIDEOFLOW_HTTP_MODELS is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("VIDEOFLOW_HTTP_MODELS must be a JSON object")
        return loaded
    models: dict[str, Any] = {}
    for part in value.split(","):
        kind, sep, path = part.strip().partition("=")
        if not sep or not kind.strip() or not path.strip():
            raise ConfigError(
                "VIDEOFLOW_HTTP_MODELS must be TYPE=PATH,... (generate=fal-ai/kling-video/v2) "
                "or a JSON object"
            )
        models[kind.strip()] = path.strip()
    return models


def _from_module(spec: str) -> VideoProvider:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--provider {spec!r}: expected module:attribute")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--provider {spec!r}: cannot import {module_name!r}: {exc}") from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"--provider {spec!r}: {module_name} has no {attribute!r}") from None
    if inspect.isclass(target) or (not isinstance(target, VideoProvider) and callable(target)):
        if inspect.signature(target).parameters:
            raise ConfigError(f"--provider {spec!r}: {attribute} must take no arguments")
        target = target()
    if not isinstance(target, VideoProvider):
        raise ConfigError(
            f"--provider {spec!r}: {type(target).__name__} is not a video provider "
            "(it needs an async run(request) -> Video)"
        )
    return target
