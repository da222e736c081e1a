"""Tests for graphdl."""
