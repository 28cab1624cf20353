"""What a chat service asks its replicas out of band: health probes, readiness, models.

All three ask an upstream the same thing, its model listing (the codec's
:attr:`~meshkit.protocol.codec.UpstreamCodec.models_path`: ``/v1/models`` or
``/api/tags``): a periodic probe of every replica, a readiness check that also counts
as a passed probe, and the model names the gateway lists. None of it is on a request's
path. :class:`~meshkit.nodes.llm.RemoteLLM` owns one :class:`Listing` and hands it the
node's timeouts at each call (they are the node's, read when asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import attrs

from ..client.http import HttpClient, Timeouts
from ..client.replicas import Replica, ReplicaSet
from ..errors import MeshError
from ..protocol.codec import UpstreamCodec


@attrs.define(eq=False)
class Listing:
    """The model listing of one service's replicas, and the health probe that asks it.

    Args:
        name: The service's name (in errors, logs and the probe task's name).
        replicas: The service's replicas.
        codec: The upstream's dialect: where the listing is and how it reads.
        headers: Sent with every listing request (the credential).
        secrets: What never shows in an error or a log line.
    """

    _name: str
    _replicas: ReplicaSet
    _codec: UpstreamCodec
    _headers: Mapping[str, str]
    _secrets: tuple[str, ...]
    _prober: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    def start(self, client: HttpClient, interval: float) -> None:
        """Probe every replica each ``interval`` s (0: no probe), until :meth:`stop`."""
        if interval > 0 and self._prober is None:
            timeout = min(5.0, max(1.0, interval))
            headers = self._headers

            async def probe(replica: Replica) -> str | None:
                url = replica.url + self._codec.models_path
                return await client.probe(url, within=timeout, headers=headers)

            self._prober = asyncio.create_task(
                self._replicas.probe_forever(probe, interval),
                name=f"meshkit.health.{self._name}",
            )

    async def stop(self) -> None:
        """Stop the health probe."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            try:
                await prober
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise

    async def ready(self, client: HttpClient, timeouts: Timeouts) -> bool:
        """True when some replica answers its model listing and requests would be taken.

        That answer also counts as a passed health probe: a replica that was out (not
        up yet when the gateway started) takes traffic as soon as readiness says so.
        """
        now = self._replicas.clock()
        for replica in sorted(self._replicas, key=lambda r: not r.available(now)):
            try:
                await self._list_models(client, replica.url, timeouts, wait=2.0)
            except MeshError:
                continue
            self._replicas.probed(replica, None)
            return self._replicas.serving()
        return False

    def _by_health(self) -> list[str]:
        """Replica URLs, those that may take traffic now first."""
        now = self._replicas.clock()
        ordered = sorted(self._replicas, key=lambda r: not r.available(now))
        return [r.url for r in ordered]

    async def models(self, client: HttpClient, timeouts: Timeouts) -> list[str]:
        """Model names the upstream lists (the first replica that answers)."""
        errors: list[MeshError] = []
        for base in self._by_health():
            try:
                return await self._list_models(client, base, timeouts, wait=timeouts.first_byte)
            except MeshError as exc:
                errors.append(exc)
        raise errors[-1]

    async def _list_models(
        self, client: HttpClient, base: str, node: Timeouts, *, wait: float
    ) -> list[str]:
        timeouts = Timeouts(min(node.connect, wait), wait, wait)
        url = base + self._codec.models_path
        raw = await client.fetch(
            "GET",
            url,
            service=self._name,
            timeouts=timeouts,
            what="model list",
            headers=self._headers,
            secrets=self._secrets,
        )
        return self._codec.models(raw)
