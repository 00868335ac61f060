"""Committed data files of the tiny models (a package so setuptools ships them)."""
