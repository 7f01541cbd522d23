//! End-to-end scenarios
