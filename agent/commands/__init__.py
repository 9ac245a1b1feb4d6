"""Remote commands: parsing, judging, replying (CONTRACT section 7)."""
