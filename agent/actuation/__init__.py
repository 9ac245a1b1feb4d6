"""Outputs and inputs, and the safety policy around outputs (CONTRACT section 8)."""
