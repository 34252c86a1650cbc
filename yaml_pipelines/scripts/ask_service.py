"""Find a service by name (discovery through the broker) and ask it one line."""

import socket
import sys

from titan_zmq.client import TitanClient

name, text = sys.argv[1], sys.argv[2]
with TitanClient() as client:  # TITAN_BROKER is set on the worker
    host, port = client.service_address(name).rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(text.encode() + b"\n")
    print("service answered:", s.makefile().readline().strip())
