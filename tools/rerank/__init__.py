"""Re-ranking of a global shortlist: putative matching, spatial verification, ASMK."""
