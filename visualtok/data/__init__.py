"""visualtok.data."""
