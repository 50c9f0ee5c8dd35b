"""The sources tests use ``tree`` / ``write_tree`` from ``tests/fixtures/clips.py``."""
