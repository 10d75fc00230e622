"""The client's view of the controller: typed control calls with retries, and routing of
segments to worker endpoints (container map cached, refreshed on demand).

Thread-safe: calls are serialised by a lock (one DEALER, owned by whichever thread holds it).
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from streamvault.client.connection import Channel, call_with_retry
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import ServiceUnavailable
from streamvault.client.protocol.naming import container_for

ATTEMPT_TIMEOUT_S = 10.0


class ControllerClient:
    def __init__(
        self, endpoint: str, *, ctx: zmq.Context | None = None, timeout_s: float = 60.0
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.ctx = ctx or zmq.Context.instance()
        self._lock = threading.Lock()
        self._channel = Channel(self.ctx, endpoint, client_name="streamvault-client")
        self._map: m.ContainerMap | None = None

    def call(self, body: m.Control, *, timeout_s: float | None = None) -> Any:
        deadline_s = self.timeout_s if timeout_s is None else timeout_s

        def attempt() -> Any:
            with self._lock:
                return self._channel.request(body, timeout_s=min(ATTEMPT_TIMEOUT_S, deadline_s))

        return call_with_retry(
            attempt, deadline_s=deadline_s, what=f"controller {type(body).__name__}"
        )

    def container_map(self, *, refresh: bool = False) -> m.ContainerMap:
        current = self._map
        if current is None or refresh:
            current = self.call(m.GetContainerMap())
            self._map = current
        return current

    def endpoint_for(self, segment: str, *, refresh: bool = False) -> str:
        """The endpoint of the worker owning `segment`'s container."""
        cmap = self.container_map(refresh=refresh)
        container = container_for(segment, cmap.container_count)
        endpoint = cmap.endpoints.get(container)
        if endpoint is None and not refresh:
            cmap = self.container_map(refresh=True)
            endpoint = cmap.endpoints.get(container)
        if endpoint is None:
            raise ServiceUnavailable(
                f"no worker serves container {container} yet", container=container
            )
        return endpoint

    def close(self) -> None:
        with self._lock:
            self._channel.close()
