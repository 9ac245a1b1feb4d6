"""Protocol pieces that several drivers share: CRCs and I2C transactions.

A driver module keeps what is its chip's own; what two chips (or two vendors) share lives
here once, tested once.
"""
