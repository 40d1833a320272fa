"""``python -m local.crm_stub``: stands in for the CRM's callback endpoint on a developer machine.

It prints each callback the service sends (type and id), so ``make run`` shows the whole loop."""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CallbackHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            event = json.loads(body)
            summary = f"{event.get('type')} {event.get('id')}"
        except ValueError:
            summary = f"{len(body)} bytes that are not JSON"
        print(
            f"[crm] callback {summary} (signature: {'yes' if self.headers.get('X-Signature') else 'no'})",
            flush=True,
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local.crm_stub")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), CallbackHandler)
    print(
        json.dumps({"ready": True, "url": f"http://127.0.0.1:{server.server_port}/crm/callbacks"}), flush=True
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
