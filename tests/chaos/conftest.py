"""The chaos tests share the integration tests' real Redis and database backends."""

from tests.integration.conftest import backend, dbs, redis_base

__all__ = ["backend", "dbs", "redis_base"]
