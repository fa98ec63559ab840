"""A provider for the ``videoflow`` command's tests, run by a real server process
(``--provider cli_provider:ServedFiles``, with ``tests/`` on ``PYTHONPATH``).

Each job writes a small file into ``$CLI_TEST_MEDIA`` and returns its URL under
``$CLI_TEST_MEDIA_URL`` (a file server the test runs), or its ``file://`` URL when the prompt
starts with ``file:`` (and for jobs whose inputs are such files). A prompt holding ``slow``
takes a minute (to be cancelled); one holding ``fail-once`` fails its first attempt for good
(``retryable=False``) and succeeds when the execution is resumed; ``gate:NAME`` waits until the
test creates the file ``NAME`` in the media directory (a minute at most).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio

from engine import JobRequest, ProviderError, Video

#: Every file this provider writes has this many bytes.
SIZE = 200_000


def content(name: str) -> bytes:
    """The bytes of the file ``name``: derived from the name, so a test can check a copy."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


class ServedFiles:
    def __init__(self) -> None:
        self.media = Path(os.environ["CLI_TEST_MEDIA"])
        self.base_url = os.environ["CLI_TEST_MEDIA_URL"].rstrip("/")
        self.latency = float(os.environ.get("CLI_TEST_LATENCY", "0.2"))
        self.failed: set[tuple[str, str]] = set()

    async def run(self, request: JobRequest) -> Video:
        prompt = str(request.params.get("prompt", ""))
        key = (request.execution_id, request.job_id)
        await anyio.sleep(60 if "slow" in prompt else self.latency)
        if "gate:" in prompt:
            gate = anyio.Path(self.media / prompt.partition("gate:")[2].split()[0])
            with anyio.fail_after(60):
                while not await gate.exists():  # noqa: ASYNC110 - another process makes it
                    await anyio.sleep(0.05)
        if "fail-once" in prompt and key not in self.failed:
            self.failed.add(key)
            raise ProviderError("the model refused this prompt (fail-once)", retryable=False)
        name = f"{request.execution_id}-{request.job_id}.mp4"
        path = self.media / name
        await anyio.Path(path).write_bytes(content(name))
        local = prompt.startswith("file:") or any(v.url.startswith("file:") for v in request.inputs)
        url = path.resolve().as_uri() if local else f"{self.base_url}/{name}"
        if request.type == "merge":
            duration = sum(v.duration for v in request.inputs)
        elif request.inputs:
            duration = request.inputs[0].duration
        else:
            duration = float(request.params.get("duration", 5))
        return Video(url, duration, "16:9", 1280, 720)
