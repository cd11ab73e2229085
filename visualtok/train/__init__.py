"""visualtok.train."""
