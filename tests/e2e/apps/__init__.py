"""Importable test apps that ``orchestra daemon --app`` loads in child processes."""
