"""Shared fixtures: each real service lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.sample",
    "tests.fixtures.s3",
    "tests.fixtures.stac_api",
    "tests.fixtures.rabbitmq",
    "tests.fixtures.stack",
    "tests.fixtures.visual",
    "tests.fixtures.failures",
]
