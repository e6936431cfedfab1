"""Tests of the method core: distortions, discriminator, presets, training, scoring, metrics, I/O."""
