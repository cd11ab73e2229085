"""visualtok.nn."""
