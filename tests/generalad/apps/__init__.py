"""Tests of the applications: fit-folder, predict, pictures, report tables, paper numbers, model files."""
