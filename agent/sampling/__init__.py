"""Sampling: when each sensor is read, and what happens when a read fails."""
