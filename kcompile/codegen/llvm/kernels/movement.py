"""(placeholder until implemented)."""
