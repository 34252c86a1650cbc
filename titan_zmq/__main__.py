"""`python -m titan_zmq` runs the `titan` command."""

from titan_zmq.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
