//! The batching middleware: a bounded queue in front, a background worker behind.

mod buffers;
mod config;
mod layer;
mod message;
mod queue;
#[cfg(feature = "spool")]
mod replay;
mod service;
mod worker;

pub use config::{BatchConfig, BeforeSend, OnError};
pub use layer::BatchLayer;
pub use message::FlushReport;
pub use service::{Batch, BatchFuture};
pub use worker::Worker;
