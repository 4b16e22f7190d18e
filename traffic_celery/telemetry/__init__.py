"""Telemetry: the Prometheus instruments every process updates (`instruments`, multiprocess mode) and the
collectors that read the figures kept in Redis at scrape time (`collectors`)."""
