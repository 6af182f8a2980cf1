//! What operators watch: Prometheus metrics and logs/traces.

pub mod metrics;
pub mod telemetry;
