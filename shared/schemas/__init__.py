"""marshmallow schemas shared by the services."""
