//! image-worker: Redis image jobs to three WebP renditions, on one GPU thread or the CPU.
//!
//! The binary in `main.rs` is a thin shell over these modules; integration tests drive the
//! binary, unit tests live beside each module.

pub mod backend;
pub mod color;
pub mod commands;
pub mod config;
pub mod decode;
pub mod encode;
pub mod failpoint;
pub mod job;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod output;
pub mod queue;
pub mod shutdown;
pub mod status;
pub mod worker;
