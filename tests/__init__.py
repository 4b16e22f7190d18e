"""The test suite: real Redis, real Celery workers, the fake provider, real sockets, a real browser."""
