use tower_layer::Layer;
use tower_service::Service;

use super::{Batch, BatchConfig};
use crate::{capture::EncodedBatch, BoxError};

/// Wraps a `Service<EncodedBatch>` in a [`Batch`], spawning its worker on the current tokio
/// runtime (like tower's `BufferLayer`).
///
/// See [`Batch`] for an example.
#[derive(Clone, Debug, Default)]
pub struct BatchLayer {
    config: BatchConfig,
}

impl BatchLayer {
    /// A layer that builds batches with `config`.
    pub fn new(config: BatchConfig) -> Self {
        BatchLayer { config }
    }
}

impl<S> Layer<S> for BatchLayer
where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Service = Batch;

    fn layer(&self, inner: S) -> Self::Service {
        Batch::new(inner, self.config.clone())
    }
}
