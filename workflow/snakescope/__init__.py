"""snakescope: microscope acquisitions -> bioimage.io inference -> review -> report.

The commands people type are in :mod:`.cli` and :mod:`.watch`; the pipeline's stages side by side in :mod:`.stages`
(each rule of ``workflow/rules/`` runs one of their functions); what stages share sits below them in :mod:`.methods`,
:mod:`.llm` and :mod:`.core`.
"""

__version__ = "0.1.0"
