"""Telling people: incident and camera events delivered where operators already are.

- :mod:`traffic_celery.notify.mqtt`: every incident event and camera state change on an MQTT broker (Home
  Assistant, Node-RED, Frigate-style integrations), QoS 1, a retained state per camera, an availability topic with
  a last will; a bounded queue rides out a broker that goes away.
- :mod:`traffic_celery.notify.webhooks`: HTTP targets from a file, HMAC-signed JSON (or a Slack-compatible
  body), delivered by Celery tasks on their own queue with retries, a dead letter and a cooldown.
- :mod:`traffic_celery.notify.service`: the `notify` process that reads the incident stream and the camera
  state changes from Redis and hands them to both.
"""
