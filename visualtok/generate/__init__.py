"""visualtok.generate."""
