"""Helpers that generate and inspect the deployment assets (dashboard, env-key table, inventory)."""
