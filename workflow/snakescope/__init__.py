"""snakescope: microscope acquisitions -> bioimage.io inference -> review -> report.

One module per stage; the Snakemake rules call the CLI in :mod:`snakescope.cli`.
"""

__version__ = "0.1.0"
