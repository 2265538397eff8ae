"""Placeholder replaced by the examples' demo."""
