"""Homogeneous refinement: gold-standard expectation-maximisation with coarse-to-fine pose search."""
