"""visualtok.video."""
