"""The embedded broker: kombu's filesystem transport with messages written atomically.

kombu's own `_put` creates the message file under its final name and then writes it, so a
consumer listing the folder in between takes an empty file, fails to decode it and stops the
worker (seen in the test suite on the embedded default). Here a message is written under a name
consumers skip and renamed into place once complete: a rename within a folder is atomic.
integrator/celery.py points the `filesystem://` URL at this transport.
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps
from kombu.utils.scheduling import FairCycle


class PriorityCycle(FairCycle):
    """Every poll tries the queues in the worker's order: the backlog lane only when the first is
    empty (routing.wakeup), as the Redis broker's `queue_order_strategy` "priority" does."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(filesystem.Channel):
    def _reset_cycle(self) -> None:
        self._cycle = PriorityCycle(self._get_and_deliver, self._active_queues, Empty)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Consumers take only names whose part after the first dot is exactly "<queue>.msg".
        partial = final + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self) -> dict:
        # A directory has no host: without this, kombu warns "No hostname was supplied" on every connect.
        return {"port": self.default_port}
