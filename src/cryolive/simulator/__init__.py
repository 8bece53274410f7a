"""Ground-truth simulation: protein-like phantoms and particle images with known poses, CTFs and states."""
