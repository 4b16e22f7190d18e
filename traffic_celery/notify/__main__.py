"""`python -m traffic_celery.notify`: the notify process (:mod:`traffic_celery.notify.service`)."""

from traffic_celery.notify.service import main

if __name__ == "__main__":
    main()
