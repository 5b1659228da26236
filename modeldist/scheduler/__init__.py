"""scheduler: lands with a later issue (see DESIGN.md)."""
