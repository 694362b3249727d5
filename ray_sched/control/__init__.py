"""Adaptive control and recovery (issue 5): fault injection for users, more to come."""
