"""Sensors: selection requests become runs."""
