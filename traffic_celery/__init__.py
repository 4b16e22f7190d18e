"""traffic_celery: watch traffic cameras, detect road users, and ask a vision LLM, through Celery, whether they
are in danger. Subpackages by stage: capture, detection, grouping, assessment, results; keys and routing.
"""
