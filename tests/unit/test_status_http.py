"""The node's local status endpoint (server/status_http.py): its JSON from a node's state, and what
it does with requests it should refuse. A real StatusServer on loopback over a stand-in node; the
credits come from a real CreditInbox holding statements a gateway signed."""

from __future__ import annotations

import http.client
import json
import socket
import time
from types import SimpleNamespace

import pytest

from swarmllm.protocol.credits import CreditStatement, credit_frame, sign_credit_statement
from swarmllm.protocol.messages import PROTOCOL_VERSION
from swarmllm.server.credits_inbox import CreditInbox
from swarmllm.server.node import NodeStatus, ServerConfig
from swarmllm.server.status_http import MAX_STREAMS, StatusServer, node_report
from swarmllm.swarm import Identity

NODE, GATEWAY_A, GATEWAY_B = Identity.generate(), Identity.generate(), Identity.generate()


def _statement(gateway: Identity, sequence: int, credits: int) -> bytes:
    s = CreditStatement(gateway=gateway.peer_id, node=NODE.peer_id, period_start=0, period_end=10,
                        credits=credits, receipts=1, sequence=sequence)
    return credit_frame(sign_credit_statement(s, public_key=gateway.public_key, sign=gateway.sign, now=10.0))


@pytest.fixture
def node(tmp_path):
    """A stand-in ServerNode: the public attributes node_report reads, with a real credit inbox."""
    inbox = CreditInbox(tmp_path / "credits.sqlite")
    for gateway, sequence, credits in ((GATEWAY_A, 1, 100), (GATEWAY_A, 2, 50), (GATEWAY_B, 1, 7)):
        inbox.accept(_statement(gateway, sequence, credits), NODE.peer_id, now=11.0)
    status = NodeStatus(peer_id=NODE.peer_id, start=3, end=9, model_id="smollm2-135m", throughput=12.345,
                        state="serving")
    service = SimpleNamespace(sessions_served=4, steps_served=40, tokens_processed=123,
                              table=SimpleNamespace(sessions={"a": 1, "b": 2}))
    traffic = SimpleNamespace(bytes_sent=1000, bytes_received=2000)
    yield SimpleNamespace(status=status, config=ServerConfig(), service=service, credits=inbox,
                          swarm=SimpleNamespace(traffic=traffic), started_at=1000.0)
    inbox.close()


def test_the_report_says_what_the_node_served_and_earned(node):
    report = node_report(node, now=1061.0)
    assert report["peer_id"] == NODE.peer_id and report["model"] == "smollm2-135m"
    assert (report["start"], report["end"], report["state"], report["paused_reason"]) == (3, 9, "serving", None)
    assert report["uptime_seconds"] == 61.0
    assert (report["sessions_served"], report["sessions_active"]) == (4, 2)
    assert (report["tokens_served"], report["steps_served"]) == (123, 40)
    assert (report["bytes_up"], report["bytes_down"]) == (1000, 2000)
    assert report["credits"] == {"total": 157, "by_gateway": {GATEWAY_A.peer_id: 150, GATEWAY_B.peer_id: 7}}
    assert report["protocol_version"] == PROTOCOL_VERSION and report["version"]
    assert report["update"] is None  # no updater on this node
    json.dumps(report)  # all of it is JSON


def test_a_starting_node_reports_zeros_not_errors(node):
    node.service, node.swarm, node.credits = None, None, None
    node.status = NodeStatus()
    report = node_report(node, now=1001.0)
    assert report["state"] == "starting" and report["peer_id"] is None
    assert report["tokens_served"] == report["sessions_active"] == report["bytes_up"] == 0
    assert report["credits"] == {"total": 0, "by_gateway": {}}


def test_a_swarm_node_without_traffic_counters_reads_as_zero_bytes(node):
    node.swarm = SimpleNamespace()
    report = node_report(node)
    assert report["bytes_up"] == report["bytes_down"] == 0


@pytest.fixture
def server(node, tmp_path):
    static = tmp_path / "static"
    (static / "assets").mkdir(parents=True)
    (static / "volunteer.html").write_text("<html>volunteer page</html>")
    (static / "assets" / "volunteer-abc.js").write_text("console.log(1)")
    s = StatusServer(lambda: node_report(node), 0, static_dir=static)
    yield s
    s.close()


def _get(server, path, method="GET", headers=None, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type"), data


def test_the_endpoint_serves_the_report_the_page_and_its_assets(server, node):
    status, kind, data = _get(server, "/api/node")
    assert status == 200 and kind == "application/json"
    assert json.loads(data)["tokens_served"] == 123
    node.service.tokens_processed = 200  # read again on every request
    assert json.loads(_get(server, "/api/node?x=1")[2])["tokens_served"] == 200
    assert _get(server, "/")[2] == b"<html>volunteer page</html>"
    assert _get(server, "/assets/volunteer-abc.js")[:2] == (200, "text/javascript")


def test_the_stream_sends_a_report_a_second(server, node):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/api/node/stream")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    first = json.loads(response.fp.readline().decode().removeprefix("data: "))
    assert response.fp.readline() == b"\n"
    node.service.steps_served = 41
    began = time.monotonic()
    second = json.loads(response.fp.readline().decode().removeprefix("data: "))
    assert (first["steps_served"], second["steps_served"]) == (40, 41)
    assert 0.5 < time.monotonic() - began < 5
    connection.close()


@pytest.mark.parametrize("method,path,headers,code,says", [
    ("POST", "/api/node", {}, 405, "only answers GET"),
    ("DELETE", "/", {}, 405, "only answers GET"),
    ("GET", "/api/nodes", {}, 404, "nothing at"),
    ("GET", "/assets/../../etc/passwd", {}, 404, "nothing at"),
    ("GET", "/assets/missing.js", {}, 404, "no file"),
    ("GET", "/api/node", {"Host": "evil.example:8642"}, 403, "only on 127.0.0.1"),
    ("GET", "/" + "a" * 70000, {}, 414, "send a plain GET"),
])
def test_bad_requests_get_a_clear_refusal(server, method, path, headers, code, says):
    status, kind, data = _get(server, path, method, headers)
    assert status == code and kind == "application/json"
    assert says in json.loads(data)["error"]


def test_garbage_on_the_socket_is_refused_and_the_endpoint_keeps_serving(server):
    for garbage, says in ((b"\x00\xff garbage\r\n\r\n", b"send a plain GET"),
                          (b"GET / x HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(garbage)
            assert says in s.recv(4096)
    assert _get(server, "/api/node")[0] == 200


def test_a_failing_report_is_a_500_sentence_and_the_next_request_succeeds(node, server):
    service = node.service
    node.service = SimpleNamespace()  # no counters: building the report raises
    status, _, data = _get(server, "/api/node")
    assert status == 500 and "report failed" in json.loads(data)["error"]
    node.service = service
    assert _get(server, "/api/node")[0] == 200


def test_too_many_streams_are_refused(server):
    connections = []
    try:
        for _ in range(MAX_STREAMS):
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            c.request("GET", "/api/node/stream")
            assert c.getresponse().status == 200
            connections.append(c)
        assert _get(server, "/api/node/stream")[0] == 503
    finally:
        for c in connections:
            c.close()
    deadline = time.monotonic() + 10  # a closed page frees its stream at its next write (within a second)
    while _stream_status(server) != 200:
        assert time.monotonic() < deadline, "closed streams were never freed"
        time.sleep(0.3)


def _stream_status(server) -> int:
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", "/api/node/stream")
    status = c.getresponse().status
    c.close()
    return status


def test_it_listens_on_loopback_only_and_a_taken_port_is_a_sentence(server):
    assert server._http.server_address[0] == "127.0.0.1"
    with pytest.raises(ValueError, match="pass another --status-port"):
        StatusServer(lambda: {}, server.port)


def test_the_config_refuses_an_impossible_port():
    with pytest.raises(ValueError, match="--status-port must be a TCP port"):
        ServerConfig(status_port=70000)
    assert ServerConfig.from_flags({"status_port": 8642}).status_port == 8642
