"""An HTTP file server with Range support for download tests: logs every range it serves and
can die mid-body (`cut_after` tensor bytes), as a server or a link does during a download.

Importable from any test (pytest puts tests/ on sys.path for tests/conftest.py).
"""

from __future__ import annotations

import http.server
import os
import re
import threading


class RangeServer:
    """Serves files of a folder with Range support; logs ranges; can cut connections mid-body."""

    def __init__(self, root):
        self.root, self.requests, self.cut_after = str(root), [], None  # cut_after: tensor bytes until the cut
        self.down = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = os.path.join(server.root, self.path.lstrip("/"))
                if server.down:
                    self.connection.close()
                    return
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                size = os.path.getsize(path)
                match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                start, end = (int(match.group(1)), int(match.group(2)) + 1) if match else (0, size)
                end = min(end, size)
                server.requests.append((self.path, start, end))
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.send_header("Content-Length", str(end - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(end - start)
                if start == 0:  # header reads never count towards the cut
                    self.wfile.write(data)
                    return
                if server.cut_after is not None and server.cut_after < len(data):
                    self.wfile.write(data[:server.cut_after])  # the server dies mid-body
                    self.wfile.flush()
                    server.cut_after, server.down = 0, True
                    self.connection.shutdown(2)
                    return
                if server.cut_after is not None:
                    server.cut_after -= len(data)
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
