"""Tests of fit-folder, predict and the pictures (tests/generalad/practitioner)."""
