"""Test helper shared by the download, COCO and prepare tests: a loopback URL where nothing listens."""

import socket


def closed_port_url() -> str:
    """http://127.0.0.1:<port> with nothing listening there, so a connection is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
