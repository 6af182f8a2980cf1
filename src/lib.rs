//! UDIM, the User Data Ingestion Module: people hand over their own data under a consent
//! that is recorded in a verifiable ledger; every byte is encrypted before it is stored and
//! the downstream pipeline is told, reliably, about every package that arrived.
//!
//! The folders are the architecture (see `docs/architecture.md`):
//!
//! - [`formats`]: pure cores with no I/O — the encrypted-object format, tus headers, `Range`,
//!   content rules, input parsing.
//! - [`consent`]: consent state derived from the ledger, and the ledger's service side
//!   (signer, sequencer, proofs, audit).
//! - [`pipeline`]: what happens to a package — ingest, resumable uploads, downstream reads,
//!   erasure, the outbox relay, and the versioned [`pipeline::events`] consumers rely on.
//! - [`http`]: the API surface; [`cli`]: the command line.
//! - [`ops`]: metrics and telemetry.
//! - [`config`] (typed settings), [`auth`] (bearer tokens), [`factory`] (settings → ports),
//!   [`startup`] (wiring).
//!
//! The ports (traits) are the `udim-ports` crate under `providers/`, one provider crate per
//! family beside it; the pure ledger is the `udim-ledger` crate under `ledger/`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod consent;
pub mod factory;
pub mod formats;
pub mod http;
pub mod ops;
pub mod pipeline;
pub mod startup;
