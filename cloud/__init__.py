"""draftlink cloud package."""
