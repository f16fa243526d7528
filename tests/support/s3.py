"""moto's S3-protocol server on a loopback port, in this process: stoppable and restartable (the objects stay:
moto keeps them in this process, not in the server thread)."""

from __future__ import annotations

from support.net import free_port

__all__ = ["AWS_TEST_ENV", "S3Server"]

AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}
"""Credentials moto accepts; boto3 finds them in the environment (this process's and the Ray workers')."""


class S3Server:
    """``ThreadedMotoServer`` on a fixed free port of 127.0.0.1; :meth:`stop` then :meth:`start` keeps the port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._factory = ThreadedMotoServer
        self.port = free_port()
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        self.server = self._factory(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server = None
