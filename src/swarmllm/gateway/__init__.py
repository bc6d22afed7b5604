"""The OpenAI-compatible HTTP gateway, browser chat and swarm dashboard.

`app.py` builds the FastAPI app; `service.py` runs generations through the swarm (client
package only, never the server); `limits.py` holds fair-use rate limits and admission
control; `swarm_status.py` keeps the live view of the swarm the dashboard shows;
`schemas.py` the request/response models of the OpenAI API subset we implement.
"""
