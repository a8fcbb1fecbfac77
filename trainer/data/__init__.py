"""Datasets: reading files, rendering formats with label masks, caching, packing and batching."""
