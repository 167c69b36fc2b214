"""One full-disk file for the fault tests: it takes ``room`` bytes, then fails as a full disk does."""
from __future__ import annotations

import errno


class LimitedFile:
    """Wraps an open file; a write past ``room`` bytes raises ENOSPC. ``partial``: first write what fits, as
    the kernel does; otherwise the failing write writes nothing. ``room`` may be shared through ``budget``
    (an object with a ``left`` attribute) by several files."""

    def __init__(self, f, room: int = 0, partial: bool = False, budget=None):
        self.f, self.partial, self.budget = f, partial, budget
        self.left = room

    @property
    def _room(self) -> int:
        return self.budget.left if self.budget is not None else self.left

    def _take(self, n: int) -> None:
        if self.budget is not None:
            self.budget.left -= n
        else:
            self.left -= n

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        room = self._room
        if n > room:
            if self.partial:
                self.f.write(data[:room])
                self._take(room)
            raise OSError(errno.ENOSPC, "No space left on device")
        self._take(n)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
