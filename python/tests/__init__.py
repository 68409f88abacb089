"""Tests for the snakepit_bridge worker runtime."""
