"""visualtok.image."""
