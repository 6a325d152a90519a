#!/usr/bin/env python3
"""A tiny echo backend for the demo: answers every request with JSON that
says which backend served it and what it saw (method, path, HTTP version,
headers). Usage: demo-backend.py NAME PORT [NAME PORT ...]"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name):
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps(
                {
                    "backend": name,
                    "method": self.command,
                    "path": self.path,
                    "version": self.request_version,
                    "headers": dict(self.headers.items()),
                },
                indent=2,
            ).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

        def log_message(self, *args):
            pass

    return Echo


def main(argv):
    if len(argv) < 2 or len(argv) % 2:
        sys.exit(__doc__)
    servers = []
    for name, port in zip(argv[0::2], argv[1::2]):
        srv = ThreadingHTTPServer(("127.0.0.1", int(port)), handler_for(name))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        print(f"backend {name} on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
