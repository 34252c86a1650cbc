"""``titan-tui``: the Textual dashboard of a titan_zmq cluster (a client; never in the data path)."""

from tui.app import TitanApp, main, make_app

__all__ = ["TitanApp", "main", "make_app"]
