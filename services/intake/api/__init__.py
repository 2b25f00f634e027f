"""Intake HTTP API blueprints."""
