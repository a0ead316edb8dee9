//! [`AiBody`]: the answer's body, passed on unchanged while it is read for the event.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::service::Recorder;

pin_project! {
    /// The response body of [`Ai`](super::Ai): the inner body's frames, unchanged and as they
    /// come, read on their way past for the call's event (a stream line by line, never whole).
    /// The event is captured when the body ends, fails or is dropped.
    pub struct AiBody<B> {
        #[pin]
        inner: B,
        recorder: Option<Box<Recorder>>,
    }
}

impl<B> AiBody<B> {
    pub(super) fn new(inner: B, recorder: Option<Box<Recorder>>) -> Self {
        AiBody { inner, recorder }
    }

    /// Gets a reference to the inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes the wrapper, returning the inner body: the call's event is captured now, with
    /// what was read so far.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for AiBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(recorder), Some(data)) = (this.recorder.as_mut(), frame.data_ref()) {
                    recorder.feed(data);
                }
            }
            Some(Err(_)) => {
                if let Some(mut recorder) = this.recorder.take() {
                    recorder.body_failed();
                }
            }
            // Dropping the recorder captures the event.
            None => drop(this.recorder.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for AiBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiBody")
            .field("inner", &self.inner)
            .field("recording", &self.recorder.is_some())
            .finish()
    }
}
