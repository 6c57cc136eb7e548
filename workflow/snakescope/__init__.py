"""snakescope: microscope acquisitions -> bioimage.io inference -> review -> report.

One module per stage; the Snakemake rules run ``python -m snakescope <stage>`` (the CLI in :mod:`snakescope.cli`).
"""

__version__ = "0.1.0"
