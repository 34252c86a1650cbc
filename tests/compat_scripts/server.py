# A long-running service: answers HTTP on $PORT (or the port given as its argument).
import http.server
import os
import sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["PORT"])
http.server.HTTPServer(("0.0.0.0", port), http.server.SimpleHTTPRequestHandler).serve_forever()
