"""`Resource`: the one place an ``open()``/``close()`` pair becomes ``async with``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Resource:
    """Base for objects that hold something between ``open()`` and ``close()``."""

    async def open(self) -> None:
        """Acquire what the object holds."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what :meth:`open` acquired."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
