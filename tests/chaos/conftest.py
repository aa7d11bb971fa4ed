"""The chaos tests share the integration tests' real Redis."""

from tests.integration.conftest import redis_base

__all__ = ["redis_base"]
