"""Development tools, not shipped in the QGIS plugin: synthetic scenes with exact labels (the demo model's data, test
rasters, benchmarks) and deterministic test weights for parity checks."""
