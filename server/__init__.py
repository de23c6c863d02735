"""The central server: ingest, association, TDOA refinement, solver, store, outputs."""
