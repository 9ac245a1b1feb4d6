"""Datasheet maths too long to sit in a driver module: calibration decoding, compensation
formulas and their inverses (for emulators), as pure functions with no bus.

A driver module (``drivers/<chip>.py``) stays what a reader opens first: options, class,
emulator, sample, spec. When its chip's maths runs to hundreds of lines, that maths lives
here as ``drivers/compensation/<chip>.py`` and is tested on its own.
"""
