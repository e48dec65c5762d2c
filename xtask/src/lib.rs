//! The project's development tasks (`cargo xtask`, see `main.rs`) and the model of the server sets
//! they run, which tests and benches read too.
//!
//! Layout:
//! - [`environments`]: `environments.toml` parsed; a set's addresses and the worker's settings.
//! - [`servers`]: the sets' servers started, health-checked, stopped (`Environment::services` for tests).
//! - [`cql`]: one CQL query against one node (the cluster convergence checks).

pub mod cql;
pub mod environments;
pub mod servers;
