"""The shared floor: records and file I/O, settings, the results layout, channel selection, rendering, inputs and
config checks. Every other part of snakescope stands on it; it imports nothing above it."""
