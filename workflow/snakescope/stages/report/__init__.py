"""Stage 6, report: the run's tables and acquisition actions, gallery images, plots, narrative summary, provenance
and the self-contained HTML page (one module per rule of ``workflow/rules/report.smk``)."""
