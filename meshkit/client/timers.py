"""Coarse timers for far deadlines: one loop timer per slot of time, not one per call.

Every upstream call is bounded (the first-token budget: 60 s unless configured) and
nearly every call ends long before its bound. A loop timer per call is work thrown away
on each request: arming one in uvloop costs a few microseconds (``call_at`` goes through
``call_later`` and the timer heap), cancelling it a bit more. A :class:`Wheel` instead
files a deadline at least :data:`EXACT_BELOW` seconds away in the slot of
:data:`RESOLUTION` seconds that ends after it; the slot's one loop timer, armed by its
first deadline, runs every callback still filed there. So a far deadline fires at most
one resolution late (50 ms on a budget of a second or more), never early, and a cancel
is a dictionary removal. A nearer deadline gets a loop timer of its own: a short budget
is not stretched by a slot.

There is one wheel per event loop (:func:`wheel`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Protocol

#: Width of a slot, in seconds: how late a far deadline may fire.
RESOLUTION = 0.05
#: Deadlines nearer than this (seconds) get an exact loop timer of their own.
EXACT_BELOW = 1.0


class Cancellable(Protocol):
    """A timer that can be stopped (a :class:`Timer` or an :class:`asyncio.TimerHandle`)."""

    def cancel(self) -> None: ...


class Timer:
    """A deadline filed in a :class:`Wheel`'s slot."""

    __slots__ = ("_slot", "arg", "callback")

    def __init__(
        self, slot: dict[Timer, None], callback: Callable[[Any], object], arg: Any
    ) -> None:
        self._slot: dict[Timer, None] | None = slot
        self.callback = callback
        self.arg = arg

    def cancel(self) -> None:
        """Stop it (nothing when it has fired or was cancelled already)."""
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.pop(self, None)

    @property
    def pending(self) -> bool:
        """It has neither fired nor been cancelled."""
        return self._slot is not None


class Wheel:
    """Deadlines of one event loop, far ones filed in slots (see the module's text).

    Args:
        loop: The loop whose time the deadlines are in and whose timers fire them.
        resolution: Width of a slot in seconds.
        exact_below: Deadlines nearer than this get a loop timer of their own.
    """

    __slots__ = ("_handles", "_loop", "_slots", "exact_below", "resolution")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        resolution: float = RESOLUTION,
        exact_below: float = EXACT_BELOW,
    ) -> None:
        self._loop = loop
        self.resolution = resolution
        self.exact_below = exact_below
        self._slots: dict[int, dict[Timer, None]] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}

    @property
    def filed(self) -> int:
        """Deadlines waiting in slots now (exact ones are the loop's own)."""
        return sum(len(slot) for slot in self._slots.values())

    def call_at(self, when: float, callback: Callable[[Any], object], arg: Any) -> Cancellable:
        """Call ``callback(arg)`` at loop time ``when`` (a far one up to a slot late)."""
        loop = self._loop
        if when - loop.time() < self.exact_below:
            return loop.call_at(when, callback, arg)
        index = int(when / self.resolution) + 1  # the slot ending after ``when``
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = {}
            self._handles[index] = loop.call_at(index * self.resolution, self._fire, index)
        timer = Timer(slot, callback, arg)
        slot[timer] = None
        return timer

    def _fire(self, index: int) -> None:
        self._handles.pop(index, None)
        slot = self._slots.pop(index, None)
        if not slot:
            return
        for timer in list(slot):
            timer._slot = None
            try:
                timer.callback(timer.arg)
            except Exception as exc:  # one failing callback must not stop the others
                self._loop.call_exception_handler(
                    {"message": "meshkit timer callback failed", "exception": exc}
                )

    def close(self) -> None:
        """Forget every deadline filed and stop the slots' loop timers."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        for slot in self._slots.values():
            for timer in slot:
                timer._slot = None
        self._slots.clear()


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = weakref.WeakKeyDictionary()
_last: list[Any] = [None, None]  # the loop asked last and its wheel: no lookup per call


def wheel(loop: asyncio.AbstractEventLoop) -> Wheel:
    """The wheel of ``loop`` (made on first use, gone with the loop)."""
    if _last[0] is loop:
        found: Wheel = _last[1]
        return found
    found = _wheels.get(loop) or _wheels.setdefault(loop, Wheel(loop))
    _last[:] = [loop, found]
    return found
