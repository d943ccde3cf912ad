"""The warm model cache: the one piece of process-wide state, explicit and bounded."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class WarmModels:
    """Loaded engines keyed by what they were loaded from; least recently used is dropped first."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.loads = 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: str, loader: Callable[[], Any]) -> tuple[Any, bool]:
        """The engine for key and whether it had to be loaded now."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], False
            while len(self._items) >= self.capacity:
                self._items.popitem(last=False)
                _release_memory()
            engine = loader()
            self.loads += 1
            self._items[key] = engine
            return engine, True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            _release_memory()

    def __len__(self) -> int:
        return len(self._items)


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


WARM_MODELS = WarmModels()
