"""Figures (matplotlib). Submodules: samples (data grids), detections (Fig. 6-style panels)."""
