"""draftlink edge package."""
