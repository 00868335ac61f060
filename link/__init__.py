"""draftlink link package."""
