"""The OpenAI-compatible HTTP gateway, browser chat and swarm dashboard.

`app.py` builds the FastAPI app and orders a request's checks; `service.py` runs generations
through the swarm (client package only, never the server); `limits.py` holds the fair-use
policies (rate limits, per-client concurrency, admission control); `clients.py` decides who
is asking (the peer, or a trusted proxy's forwarded address); `api_keys.py` the optional API
keys; `body_limit.py` the request-size middleware; `disconnects.py` what happens when a
client leaves mid-generation; `swarm_status.py` keeps the live view of the swarm the
dashboard shows; `schemas.py` the request/response models of the OpenAI API subset we
implement.
"""
