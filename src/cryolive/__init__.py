"""cryolive: cryo-EM single-particle analysis that streams into napari.

The numerical core (``rotations``, ``image``, ``projection``, ``resolution``, ``masks``, ``io``, ``simulator``,
``jobs``) never imports Qt or napari; only ``cryolive.plugin`` does.
"""

__version__ = "0.1.0"
