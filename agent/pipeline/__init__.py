"""The path of a reading from the scheduler to the broker: the store-and-forward outbox."""
