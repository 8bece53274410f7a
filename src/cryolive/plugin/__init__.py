"""napari integration (the only part of cryolive that may import napari or Qt)."""
