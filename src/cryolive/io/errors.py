"""The one exception type for bad input files."""

from __future__ import annotations


class InputError(ValueError):
    """A file cryolive was asked to read is missing, malformed or inconsistent.

    The message always names the file and says what is wrong with it (for example
    ``"particles.star: data_particles row 12: rlnImageName '000040@stack.mrcs' refers to image 40 but
    stack.mrcs holds 30 images"``), so it can be shown to the user as is.
    """
