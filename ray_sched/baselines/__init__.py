"""Honest baselines, driven by the same replay: plain Ray scheduling and Dask's scheduler."""
