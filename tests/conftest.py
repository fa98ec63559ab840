import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# A fast profile for local runs and a thorough one for CI (`HYPOTHESIS_PROFILE=ci`).
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def schema() -> Iterator[str]:
    """A PostgreSQL schema name no other test uses; the schema is dropped after the test."""
    from pg_support import drop_schema, new_schema_name

    name = new_schema_name()
    yield name
    drop_schema(name)
