"""The composition root: the one package that wires the core to `adapters/` and `brain/`."""
