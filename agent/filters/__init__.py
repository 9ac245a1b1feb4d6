"""Filters, derived quantities and the publish policy: what happens to a sensor's values
between the driver and the outbox (CONTRACT section 12)."""
