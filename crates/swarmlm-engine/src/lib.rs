//! swarmlm-engine: see docs/ARCHITECTURE.md.
