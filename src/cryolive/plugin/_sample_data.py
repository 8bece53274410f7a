"""napari sample data: the bundled simulated map and particle set (see ``sample_data/README.md``)."""

from __future__ import annotations

from cryolive.plugin._reader import mrc_layer, particles_layer
from cryolive.sample import sample_path


def sample_map() -> list[tuple]:
    """The bundled reference map (low-passed truth) as an image layer."""
    return [mrc_layer(str(sample_path("reference.mrc")))]


def sample_particles() -> list[tuple]:
    """The bundled particle stack and the true map."""
    return [particles_layer(str(sample_path("particles.star"))), mrc_layer(str(sample_path("truth_map.mrc")))]
