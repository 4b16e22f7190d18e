"""Celery task modules (`workers.<module>.<name>`) and the worker entry point (`python -m workers`)."""
