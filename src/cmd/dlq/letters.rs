//! [`Letters`]: the dead letters a filter matches, read one fetch page at a time.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;

use super::{DeadLetter, DlqError, Filter};
use crate::config::NatsConfig;
use crate::deadletter;
use crate::nats::BoxError;

/// Letters per fetch: what `list` holds at once.
const PAGE: usize = 256;

/// The matching dead letters, oldest first, a page at a time: memory is bounded by one page
/// whatever the stream holds. Ends at the last letter stored when it was opened.
pub struct Letters {
    consumer: Consumer<pull::Config>,
    page: Option<jetstream::consumer::pull::Batch>,
    page_len: usize,
    remaining: usize,
    until: Option<chrono::DateTime<chrono::Utc>>,
    last_sequence: u64,
    /// Matching letters when opened (for progress; `--limit` and `--until` may stop earlier).
    pub total: u64,
    done: bool,
    stream: String,
}

impl Letters {
    pub async fn open(
        js: &Context,
        config: &NatsConfig,
        filter: &Filter,
    ) -> Result<Letters, DlqError> {
        let fail = |e: BoxError| DlqError {
            stream: config.deadletter_stream.clone(),
            source: e,
        };
        let mut stream = js
            .get_stream(&config.deadletter_stream)
            .await
            .map_err(|e| fail(e.into()))?;
        let last_sequence = stream
            .info()
            .await
            .map_err(|e| fail(e.into()))?
            .state
            .last_sequence;
        let filter_subject = match filter.reason {
            Some(reason) => format!("{}.{}", config.deadletter_prefix, reason.as_str()),
            None => format!("{}.>", config.deadletter_prefix),
        };
        let deliver_policy = match filter.since {
            Some(start_time) => DeliverPolicy::ByStartTime { start_time },
            None => DeliverPolicy::All,
        };
        // An ephemeral consumer that acknowledges nothing: listing never changes the stream.
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject,
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.into()))?;
        let total = consumer.cached_info().num_pending;
        let remaining = filter.limit.unwrap_or(usize::MAX);
        Ok(Letters {
            consumer,
            page: None,
            page_len: 0,
            remaining,
            until: filter.until,
            last_sequence,
            total: total.min(remaining as u64),
            done: remaining == 0,
            stream: config.deadletter_stream.clone(),
        })
    }

    fn fail(&self, e: BoxError) -> DlqError {
        DlqError {
            stream: self.stream.clone(),
            source: e,
        }
    }

    /// The next letter, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<DeadLetter>, DlqError> {
        while !self.done {
            let Some(page) = self.page.as_mut() else {
                let page = self
                    .consumer
                    .fetch()
                    .max_messages(PAGE.min(self.remaining))
                    .messages()
                    .await
                    .map_err(|e| self.fail(e.into()))?;
                self.page = Some(page);
                self.page_len = 0;
                continue;
            };
            match page.next().await {
                Some(message) => {
                    let message = message.map_err(|e| self.fail(e))?;
                    self.page_len += 1;
                    let info = message.info().map_err(|e| self.fail(e))?;
                    let (sequence, stored_at) = (info.stream_sequence, info.published);
                    if sequence > self.last_sequence
                        || self.until.is_some_and(|until| stored_at >= until)
                    {
                        self.done = true;
                        return Ok(None);
                    }
                    self.remaining -= 1;
                    self.done = self.remaining == 0 || info.pending == 0;
                    return Ok(Some(to_dead_letter(sequence, stored_at, &message)));
                }
                None => {
                    self.done = self.page_len == 0;
                    self.page = None;
                }
            }
        }
        Ok(None)
    }
}

fn to_dead_letter(
    sequence: u64,
    stored_at: chrono::DateTime<chrono::Utc>,
    message: &jetstream::Message,
) -> DeadLetter {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    DeadLetter {
        sequence,
        stored_at,
        reason: header(deadletter::REASON),
        error: header(deadletter::ERROR),
        original_subject: header(deadletter::ORIGINAL_SUBJECT),
        payload: message.payload.clone(),
        truncated_from: header(deadletter::PAYLOAD_TRUNCATED).parse().ok(),
    }
}
