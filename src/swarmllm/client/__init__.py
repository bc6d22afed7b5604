"""The client: finds servers in the DHT, routes a chain over them, runs sessions.

`routing.py` is pure (records + RTTs -> chain); `session.py` drives one inference session
over a chain (async); `swarm_client.py` is the synchronous facade the CLI, the generation
loop and the gateway use. The client never imports the server: they meet in protocol/.
"""
