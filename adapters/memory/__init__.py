"""In-memory adapters: public, deterministic and inspectable, for tests and embedding."""

from adapters.memory.notifier import RecordingNotifier
from adapters.memory.provider import FakeCall, FakeVideoProvider
from adapters.memory.queue import MemoryQueue
from adapters.memory.storage import MemoryStorage

__all__ = ["FakeCall", "FakeVideoProvider", "MemoryQueue", "MemoryStorage", "RecordingNotifier"]
