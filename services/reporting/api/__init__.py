"""Reporting HTTP API blueprints."""
