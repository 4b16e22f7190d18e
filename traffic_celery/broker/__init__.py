"""The message broker side shared by producers and workers: Celery's configuration from the settings, the
producer app that sends tasks by name, and the Redis transport with the fix for Redis vanishing mid-BRPOP.

Nothing here builds an app or reads settings at import time.
"""
