//! One pull request and the reading of what it delivers, bounded in messages *and bytes*.
//!
//! A pull asks for at most `messages` messages and `max_bytes` bytes as the server counts them
//! (subject, reply, headers and payload), so a burst of messages near the server's `max_payload`
//! puts at most `max_bytes` per pull into the worker, whatever validation says about them later.
//!
//! async-nats' own batch cannot carry `max_bytes`: from nats-server 2.10 a pull that fills its count
//! while bytes remain ends with `409 Batch Completed`, and on a replicated consumer that status
//! overtakes the messages (they wait for the consumer's quorum); async-nats ends the batch at the
//! status and drops the messages behind it. Here a status that ends a request tells, in
//! `Nats-Pending-Messages`, how many it did *not* deliver, so the reader knows how many it was
//! handed and reads until it has them all, in whatever order they arrive.
//!
//! A message larger than `max_bytes` would end every such pull with `409 Message Size Exceeds
//! MaxBytes` and never be delivered: when a pull ends that way with nothing delivered, the next one
//! asks for that one message without a byte limit ([`Request::oversized_ahead`]).

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{BatchConfig, Config};
use async_nats::jetstream::{self, consumer::Consumer};
use async_nats::StatusCode;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

/// How long after a request's end (its expiry, or a status saying how many messages it delivered)
/// the reader still waits for deliveries that have not arrived.
const STRAGGLERS: Duration = Duration::from_secs(5);

/// How much one pull asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size {
    pub messages: usize,
    /// `None`: no byte limit (one message known to be larger than the usual limit).
    pub max_bytes: Option<usize>,
}

/// A pull that failed: it could not be sent, or the server refused it.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reply inbox could not be subscribed.
    #[error("cannot subscribe to a pull request's inbox")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The request could not be published.
    #[error("cannot send a pull request")]
    Send(#[source] async_nats::jetstream::consumer::pull::BatchRequestError),
    /// `gone`: the consumer (or its stream) does not exist.
    #[error("pull refused: {status} {description}")]
    Refused {
        status: u16,
        description: String,
        gone: bool,
    },
}

impl PullError {
    /// The consumer or its stream is gone (deleted, or not created yet).
    pub fn consumer_gone(&self) -> bool {
        matches!(self, PullError::Refused { gone: true, .. })
    }
}

/// What a status message means for the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Idle heartbeat: the request goes on.
    Heartbeat,
    /// The request is over; `pending`: how many of the asked messages it did not deliver (`None`:
    /// the server does not say, so what it delivered came before the status).
    End { pending: Option<usize> },
    /// Over because the next message does not fit the bytes left.
    TooLarge { pending: Option<usize> },
    /// Refused (`gone`: the consumer or the stream does not exist).
    Refused { gone: bool },
}

fn classify(code: u16, description: &str, pending: Option<usize>) -> Status {
    match code {
        100 => Status::Heartbeat,
        // No messages (a no-wait pull), request timeout or interest expired.
        404 | 408 => Status::End { pending },
        409 if description.starts_with("Message Size Exceeds MaxBytes") => {
            Status::TooLarge { pending }
        }
        409 if description.contains("Consumer Deleted") => Status::Refused { gone: true },
        // Batch Completed; Leadership Change and other ends that say what they did not deliver.
        409 if pending.is_some() => Status::End { pending },
        // No responders: nothing serves the consumer's pull subject.
        503 => Status::Refused { gone: true },
        _ => Status::Refused { gone: false },
    }
}

/// One pull request being read.
pub(super) struct Request {
    sub: async_nats::Subscriber,
    context: jetstream::Context,
    asked: usize,
    /// How many the server delivered, once a status told.
    delivered: Option<usize>,
    received: usize,
    deadline: Instant,
    ended: bool,
    oversized_ahead: bool,
}

impl Request {
    /// Sends a pull request for `size`, expiring after `expires`.
    pub async fn send(
        consumer: &Consumer<Config>,
        context: &jetstream::Context,
        size: Size,
        expires: Duration,
    ) -> Result<Request, PullError> {
        let client = context.client();
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(PullError::Subscribe)?;
        let batch = BatchConfig {
            batch: size.messages,
            expires: Some(expires),
            max_bytes: size.max_bytes.unwrap_or(0),
            ..Default::default()
        };
        consumer
            .request_batch(batch, inbox.into())
            .await
            .map_err(PullError::Send)?;
        Ok(Request {
            sub,
            context: context.clone(),
            asked: size.messages,
            delivered: None,
            received: 0,
            deadline: Instant::now() + expires + STRAGGLERS,
            ended: false,
            oversized_ahead: false,
        })
    }

    /// The pull ended, with nothing delivered, at a message larger than its byte limit.
    pub fn oversized_ahead(&self) -> bool {
        self.oversized_ahead
    }

    /// The next delivered message; `None` once the request is over. Messages already in the
    /// client's buffer are returned whatever the time: nothing handed over is dropped unread.
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        loop {
            if self.ended || self.received >= self.delivered.unwrap_or(self.asked) {
                self.ended = true;
                return None;
            }
            let next = match self.sub.next().now_or_never() {
                Some(next) => next,
                None => match tokio::time::timeout_at(self.deadline, self.sub.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if let Some(delivered) = self.delivered {
                            tracing::warn!(
                                delivered,
                                received = self.received,
                                "messages a pull delivered did not arrive; NATS redelivers them after ack_wait"
                            );
                        }
                        None
                    }
                },
            };
            let Some(message) = next else {
                self.ended = true;
                return None;
            };
            match self.status(&message) {
                None => {
                    self.received += 1;
                    return Some(Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                Some(Status::Heartbeat) => {}
                Some(Status::End { pending }) => self.end(pending),
                Some(Status::TooLarge { pending }) => {
                    self.end(pending);
                    self.oversized_ahead = self.received == 0 && self.ended;
                }
                Some(Status::Refused { gone }) => {
                    self.ended = true;
                    return Some(Err(PullError::Refused {
                        status: message.status.map_or(0, |s| s.as_u16()),
                        description: message.description.clone().unwrap_or_default(),
                        gone,
                    }));
                }
            }
        }
    }

    /// What the client already holds of this request, never waiting (to hand it back).
    pub fn buffered(&mut self) -> Option<jetstream::Message> {
        while let Some(Some(message)) = self.sub.next().now_or_never() {
            if self.status(&message).is_none() {
                self.received += 1;
                return Some(jetstream::Message {
                    message,
                    context: self.context.clone(),
                });
            }
        }
        None
    }

    fn status(&self, message: &async_nats::Message) -> Option<Status> {
        let code = message.status.filter(|s| *s != StatusCode::OK)?;
        let pending = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse().ok());
        Some(classify(
            code.as_u16(),
            message.description.as_deref().unwrap_or(""),
            pending,
        ))
    }

    /// A status ended the request: read on until what it says it delivered has arrived.
    fn end(&mut self, pending: Option<usize>) {
        match pending.map(|p| self.asked.saturating_sub(p)) {
            Some(delivered) if delivered > self.received => {
                self.delivered = Some(delivered);
                self.deadline = Instant::now() + STRAGGLERS;
            }
            _ => self.ended = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_that_end_a_pull_and_those_that_refuse_it() {
        let cases = [
            (100, "Idle Heartbeat", None, Status::Heartbeat),
            (404, "No Messages", None, Status::End { pending: None }),
            (
                408,
                "Request Timeout",
                Some(3),
                Status::End { pending: Some(3) },
            ),
            (408, "Request Timeout", None, Status::End { pending: None }),
            (
                409,
                "Batch Completed",
                Some(0),
                Status::End { pending: Some(0) },
            ),
            (
                409,
                "Message Size Exceeds MaxBytes",
                Some(100),
                Status::TooLarge { pending: Some(100) },
            ),
            (
                409,
                "Leadership Change",
                Some(7),
                Status::End { pending: Some(7) },
            ),
            (
                409,
                "Consumer Deleted",
                None,
                Status::Refused { gone: true },
            ),
            (
                409,
                "Exceeded MaxRequestBatch of 10",
                None,
                Status::Refused { gone: false },
            ),
            (503, "", None, Status::Refused { gone: true }),
            (400, "Bad Request", None, Status::Refused { gone: false }),
        ];
        for (code, description, pending, want) in cases {
            assert_eq!(
                classify(code, description, pending),
                want,
                "{code} {description}"
            );
        }
    }
}
