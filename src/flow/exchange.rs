//! One HTTP exchange as a host's stream callbacks drive it: the order of
//! the flow's steps in each callback, kept here so that every host runs
//! them alike.

use super::{request, response, shadow, Host, Next, Pending, Plan, Stream, Worker};

/// What a stream keeps between its callbacks.
#[derive(Default)]
pub struct Exchange {
    /// Decided: what the response path needs.
    pub(crate) pending: Option<Pending>,
    /// Shadowed: this side of the comparison.
    pub(crate) shadow: Option<shadow::Primary>,
    /// A gRPC response whose outcome comes with the trailers.
    awaiting: Option<response::Awaiting>,
}

impl Exchange {
    /// Request headers: read once, decide, write the target; then the
    /// shadow draw (on the same headers).
    pub fn on_request_headers(
        &mut self,
        host: &impl Host,
        stream: &impl Stream,
        plan: &Plan,
        worker: &Worker,
        end_of_stream: bool,
    ) -> Next {
        let headers = request::read_headers(stream);
        let next = request::on_request(host, stream, plan, worker, &headers, &mut self.pending);
        let pending = self.pending.as_ref();
        shadow::start(
            host,
            stream,
            plan,
            worker,
            pending,
            headers,
            end_of_stream,
            &mut self.shadow,
        );
        next
    }

    /// A request body chunk (`body_size` bytes).
    pub fn on_request_body(
        &mut self,
        host: &impl Host,
        stream: &impl Stream,
        plan: &Plan,
        worker: &Worker,
        body_size: usize,
        end_of_stream: bool,
    ) {
        let shadow = &mut self.shadow;
        shadow::request_body(host, stream, plan, worker, shadow, body_size, end_of_stream);
    }

    /// The request's trailers: a shadowed request's body is complete.
    pub fn on_request_trailers(&mut self, host: &impl Host, plan: &Plan, worker: &Worker) {
        shadow::request_trailers(host, plan, worker, &mut self.shadow);
    }

    /// Response headers: the shadow's side, then the outcome.
    pub fn on_response_headers(
        &mut self,
        host: &impl Host,
        stream: &impl Stream,
        plan: &Plan,
        worker: &Worker,
        end_of_stream: bool,
    ) {
        shadow::response_headers(host, stream, plan, worker, &mut self.shadow, end_of_stream);
        let pending = self.pending.take();
        self.awaiting = response::on_response(host, stream, plan, worker, pending, end_of_stream);
    }

    /// Response trailers: the shadow's side (its response ends here), then
    /// a gRPC outcome (`grpc-status`). Nothing is read from them for a
    /// stream that is neither shadowed nor waiting for a gRPC status.
    pub fn on_response_trailers(
        &mut self,
        host: &impl Host,
        stream: &impl Stream,
        plan: &Plan,
        worker: &Worker,
    ) {
        shadow::response_trailers(host, stream, plan, worker, &mut self.shadow);
        if let Some(a) = self.awaiting.take() {
            response::on_trailers(host, stream, plan, worker, a);
        }
    }

    /// A response body chunk (`body_size` bytes).
    pub fn on_response_body(
        &mut self,
        host: &impl Host,
        stream: &impl Stream,
        plan: &Plan,
        worker: &Worker,
        body_size: usize,
        end_of_stream: bool,
    ) {
        let shadow = &mut self.shadow;
        shadow::response_body(host, stream, plan, worker, shadow, body_size, end_of_stream);
    }

    /// The stream is gone (however it ended): a shadowed request not
    /// finished ends as incomplete; a gRPC response that never had its
    /// trailers is settled without a status.
    pub fn end(&mut self, host: &impl Host, plan: &Plan, worker: &Worker) {
        if let Some(a) = self.awaiting.take() {
            response::end(host, plan, worker, a);
        }
        shadow::end(host, plan, worker, &mut self.shadow);
    }
}
