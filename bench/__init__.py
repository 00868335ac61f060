"""draftlink bench package."""
