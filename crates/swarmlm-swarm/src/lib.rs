//! swarmlm-swarm: see docs/ARCHITECTURE.md.
