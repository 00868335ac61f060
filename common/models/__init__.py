"""draftlink common/models package."""
