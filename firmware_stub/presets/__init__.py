"""Device presets of the emulated array, shipped as package data (``NAME.toml``)."""
