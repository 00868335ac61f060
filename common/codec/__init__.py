"""draftlink common/codec package."""
