"""``--provider SPEC``: which video provider a server or worker runs.

- ``fake``: ``adapters.memory.FakeVideoProvider``. Its results are not real videos (``fake://``
  URLs), and the command says so when it starts.
- ``ffmpeg``: ``adapters.ffmpeg.FFmpegVideoProvider(--output-dir, input_dirs=--input-dir)``:
  real MP4 files made by FFmpeg.
- ``module:attribute``: a provider object, or a zero-argument callable that returns one, named
  as uvicorn names an app (``myapp.providers:make_provider``). The module is imported from the
  current directory too.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import ConfigError, VideoProvider

#: The names ``--provider`` takes besides ``module:attribute``.
NAMED = ("fake", "ffmpeg")


def load_provider(
    spec: str,
    *,
    output_dir: str | None = None,
    input_dirs: Sequence[str] = (),
    allowed_networks: Sequence[str] = (),
) -> VideoProvider:
    """The provider ``spec`` names; :class:`ConfigError` saying what is wrong otherwise."""
    if spec == "fake":
        from adapters.memory import FakeVideoProvider

        return FakeVideoProvider()
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
