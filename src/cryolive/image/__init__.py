"""Images: centred Fourier transforms, frequency grids, shifts, the CTF and CTF correction."""
