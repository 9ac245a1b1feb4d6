"""Store-and-forward: the durable queue of messages waiting for the broker (CONTRACT 6)."""

from agent.buffer.store import SCHEMA_VERSION, MessageStore, QueuedMessage, SequenceStore

__all__ = ["SCHEMA_VERSION", "MessageStore", "QueuedMessage", "SequenceStore"]
