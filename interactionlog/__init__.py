"""interactionlog."""
