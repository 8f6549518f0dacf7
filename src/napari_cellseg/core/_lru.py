"""A dict that keeps its most recently used entries only.

Written by hand: the standard library's ``functools.lru_cache`` caches function calls,
not a dict whose entries are filled by several methods, and the one library that has
such a mapping (cachetools) is not worth a dependency for a dozen lines.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class LRUDict(OrderedDict):
    """At most ``maxsize`` entries; reading or writing one makes it the most recent, and
    an insertion beyond ``maxsize`` drops the least recent. The stages' caches are of
    this kind, so that sweeping a slider over many values does not keep a full-size map
    per value for as long as the prediction lives.

    Safe across threads (a widget's worker fills a stage's cache while the GUI thread
    reads it): read with :meth:`get`, which never finds a key then loses it to another
    thread's eviction before reading it, as ``key in d`` then ``d[key]`` could."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        super().__init__()
        self.maxsize = maxsize
        self._lock = threading.RLock()

    def __getitem__(self, key):
        with self._lock:
            value = super().__getitem__(key)
            self.move_to_end(key)
            return value

    def get(self, key, default=None):
        with self._lock:
            return self[key] if key in self else default  # noqa: SIM401 (self.get would recurse)

    def __setitem__(self, key, value) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.maxsize:
                self.popitem(last=False)
