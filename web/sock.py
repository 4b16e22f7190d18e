"""The flask-sock extension object, bound to the app in `create_app` (nothing is built at import time)."""

from flask_sock import Sock

sock = Sock()
