"""Landscape geometry: directions, slices, connectivity, trajectories, intrinsic dimension."""
