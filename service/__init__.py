"""modalrec online service. Never imports torch."""
