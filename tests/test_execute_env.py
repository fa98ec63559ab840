"""``pipeline.execute()`` with no target: the server named by ``VIDEOFLOW_API_URL`` and
``VIDEOFLOW_API_KEY`` (the seed's ``productDemo.execute()``), or an error naming both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from http_support import live_api

from engine import EngineError, Pipeline, compose, generate_video, merge

pytestmark = pytest.mark.anyio

VARIABLES = ("VIDEOFLOW_API_URL", "VIDEOFLOW_API_KEY")


def product_demo() -> Pipeline:
    return compose(
        generate_video(prompt="Scene 1", duration=3),
        generate_video(prompt="Scene 2", duration=3),
        merge(transition="crossfade"),
    )


async def test_execute_with_no_target_uses_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with live_api(tmp_path / "e.db") as live:
        monkeypatch.setenv("VIDEOFLOW_API_URL", live.url)
        monkeypatch.setenv("VIDEOFLOW_API_KEY", "key-beta")
        pipeline = product_demo()
        execution = await pipeline.execute()
        video = await execution.wait(timeout=10)
        assert video.duration == pytest.approx(5.0)  # 3 + 3 less the 1 s crossfade
        # Submitted with the key from the environment: the execution is tenant beta's.
        assert (await live.engine.get(execution.id, tenant="beta")).id == execution.id
        assert live.counting.paths["POST /api/execute"] == 1
        # Explicit options win over the environment.
        monkeypatch.setenv("VIDEOFLOW_API_KEY", "not-a-key")
        other = await pipeline.execute(api_url=live.url, api_key="key-alpha")
        assert (await live.engine.get(other.id, tenant="alpha")).id == other.id


@pytest.mark.parametrize(
    ("url", "key", "unset"),
    [
        (None, None, "VIDEOFLOW_API_URL and VIDEOFLOW_API_KEY not set"),
        ("http://127.0.0.1:9", None, "VIDEOFLOW_API_KEY not set"),
        (None, "k", "VIDEOFLOW_API_URL not set"),
        ("", "", "VIDEOFLOW_API_URL and VIDEOFLOW_API_KEY not set"),
    ],
)
async def test_execute_with_no_target_and_no_environment_names_both_ways(
    monkeypatch: pytest.MonkeyPatch, url: str | None, key: str | None, unset: str
) -> None:
    for name, value in zip(VARIABLES, (url, key), strict=True):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(EngineError) as raised:
        await product_demo().execute()
    message = str(raised.value)
    assert message == (
        "execute() needs a target: pass an Engine or an adapters.http.EngineClient, or run "
        "against a server by setting both VIDEOFLOW_API_URL and VIDEOFLOW_API_KEY "
        f"({unset}) or passing api_url= and api_key="
    )


async def test_half_given_options_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOFLOW_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VIDEOFLOW_API_KEY", "k")
    with pytest.raises(EngineError, match=r"^api_url= needs api_key="):
        await product_demo().execute(api_url="http://127.0.0.1:9")
    with pytest.raises(EngineError, match=r"^api_key= needs api_url="):
        await product_demo().execute(api_key="k")
