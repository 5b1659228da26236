"""proto: lands with a later issue (see DESIGN.md)."""
