"""visualtok.audio."""
