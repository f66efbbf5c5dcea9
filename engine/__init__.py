"""jetdag.engine: the core."""
