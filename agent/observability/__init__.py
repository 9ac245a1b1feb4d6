"""What the agent tells people and monitoring about itself: /healthz, /metrics."""
