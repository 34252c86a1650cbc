"""A tiny TCP service for the tests: answers each line with its pid, on $PORT."""

import os
import socketserver


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} {line.decode().strip()}\n".encode())


if __name__ == "__main__":
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    print(f"echo server on port {os.environ['PORT']}", flush=True)
    with socketserver.ThreadingTCPServer(("0.0.0.0", int(os.environ["PORT"])), Handler) as server:
        server.serve_forever()
