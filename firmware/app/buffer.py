# Readings waiting for their PubAck. Bounded: when full, the oldest reading
# is dropped and counted, so the device never runs out of memory offline.

import asyncio


class Buffer:
    def __init__(self, size):
        self.size = size
        self.items = []  # [payload bytes, guid of the last send attempt or None]
        self.dropped = 0
        self.sending = None  # the item whose PubAck is awaited: never dropped
        self.ev = asyncio.Event()

    def push(self, payload):
        items = self.items
        if len(items) >= self.size:
            items.pop(1 if items[0] is self.sending and len(items) > 1 else 0)
            self.dropped += 1
        self.items.append([payload, None])
        self.ev.set()

    def head(self):
        return self.items[0] if self.items else None

    def sent(self, item):
        """``item`` has its PubAck: forget it."""
        if self.items and self.items[0] is item:
            self.items.pop(0)
        self.sending = None

    def __len__(self):
        return len(self.items)
