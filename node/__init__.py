"""The field node: audio sources, timebase, detector, GPS, publisher, health.

Nothing in this package knows whether it runs on a pole or in the simulation: the
audio source, timebase and GPS are adapters chosen by the config.
"""
