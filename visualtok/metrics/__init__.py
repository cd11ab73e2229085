"""visualtok.metrics."""
