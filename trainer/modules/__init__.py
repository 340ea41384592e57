"""Reusable model building blocks."""
