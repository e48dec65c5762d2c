//! The server's max-deliveries advisories: a message NATS stopped delivering without any replica
//! settling it (every delivery crashed a worker, or the dead-letter queue was full each time) is
//! dead-lettered, not forgotten. Its fate comes from the same [`decide`] as every other message's;
//! the [`DeadLetterQueue`] reads it from the stream, stores its letter (retried until the dead-letter
//! stream takes it) and deletes it from a work-queue stream.
//!
//! The watcher only subscribes (by the stream and consumer names of the configuration), so nothing it
//! needs can fail at start-up: a JetStream that does not answer then does not keep it from running.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{Advised, DeadLetterQueue};
use crate::pipeline::settle::{decide, Attempt, Settler};
use crate::pipeline::Outcome;

#[derive(serde::Deserialize)]
struct Advisory {
    stream_seq: u64,
    deliveries: i64,
}

/// The advisory subject of a stream's consumer.
pub fn subject(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

/// Listens until `cancel`; one replica of the queue group handles each advisory.
pub async fn watch_max_deliveries(
    client: async_nats::Client,
    stream: String,
    consumer: String,
    queue: DeadLetterQueue,
    settler: Settler,
    cancel: CancellationToken,
) {
    let subject = subject(&stream, &consumer);
    let mut failures = 0u32;
    let mut advisories = loop {
        match client
            .queue_subscribe(subject.clone(), "score-worker-advisories".into())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = crate::retry::growing_wait(failures);
                tracing::error!(error = %crate::error_chain(&e), %subject, retry_in = ?wait, "cannot subscribe to max-deliveries advisories");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    loop {
        let advisory = tokio::select! {
            () = cancel.cancelled() => return,
            next = advisories.next() => match next { Some(m) => m, None => return },
        };
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&advisory.payload) else {
            continue;
        };
        let attempt = Attempt::Abandoned {
            deliveries: advisory.deliveries,
        };
        if let Outcome::DeadLetter { reason, detail } =
            decide(attempt, advisory.deliveries, settler.limits())
        {
            queue.advised(Advised {
                stream_sequence: advisory.stream_seq,
                reason,
                detail,
            });
        }
    }
}
