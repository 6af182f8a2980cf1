//! UDIM, the User Data Ingestion Module: people hand over their own data under a consent
//! that is recorded in a verifiable ledger; every byte is encrypted before it is stored and
//! the downstream pipeline is told, reliably, about every package that arrived.
//!
//! Architecture: the ports (traits) live in the `udim-ports` crate under `providers/`, one
//! provider crate per family beside it; this crate holds the pure cores ([`envelope`],
//! [`ledger`], [`validate`]), the pipeline ([`ingest`], [`relay`], [`consent`]), the HTTP
//! surface ([`http`]), the provider factory ([`providers`]) and the CLI ([`cli`]).

pub mod auth;
pub mod cli;
pub mod config;
pub mod consent;
pub mod content;
pub mod envelope;
pub mod erasure;
pub mod http;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod providers;
pub mod read;
pub mod relay;
pub mod resumable;
pub mod startup;
pub mod telemetry;
pub mod tus;
pub mod upload_client;
pub mod validate;
