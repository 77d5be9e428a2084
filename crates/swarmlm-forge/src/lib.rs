//! swarmlm-forge: see docs/ARCHITECTURE.md.
