//! The server's max-deliveries advisories: a message NATS stopped delivering without any replica
//! settling it (every delivery crashed a worker, say) is dead-lettered, not forgotten. Its fate comes
//! from the same [`decide`] as every other message's.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetterError, DeadLetters, Original};
use crate::pipeline::settle::{decide, Attempt, Limits, Outcome};

/// Why an advised message could not be dead-lettered.
#[derive(Debug, thiserror::Error)]
enum AdvisedError {
    #[error("reading stream sequence {0}: {1}")]
    Read(u64, #[source] jetstream::stream::RawMessageError),
    #[error(transparent)]
    Publish(#[from] DeadLetterError),
}

#[derive(serde::Deserialize)]
struct Advisory {
    stream_seq: u64,
    deliveries: i64,
}

/// Listens until `cancel`; one replica of the queue group handles each advisory.
pub async fn watch_max_deliveries(
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    consumer_name: String,
    deadletters: Arc<DeadLetters>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let stream_name = stream.cached_info().config.name.clone();
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{consumer_name}");
    let mut advisories = match client
        .queue_subscribe(subject.clone(), "score-worker-advisories".into())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %subject, "cannot subscribe to max-deliveries advisories");
            return;
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
        if let Err(e) = dead_letter(&stream, &deadletters, &advisory, limits).await {
            tracing::error!(stream_sequence = advisory.stream_seq, error = %e, "cannot dead-letter a max-deliveries message");
        }
    }
}

async fn dead_letter(
    stream: &jetstream::stream::Stream,
    deadletters: &DeadLetters,
    advisory: &Advisory,
    limits: Limits,
) -> Result<(), AdvisedError> {
    let attempt = Attempt::Abandoned {
        deliveries: advisory.deliveries,
    };
    let Outcome::DeadLetter { reason, detail } = decide(attempt, advisory.deliveries, limits)
    else {
        return Ok(());
    };
    let original = stream
        .get_raw_message(advisory.stream_seq)
        .await
        .map_err(|e| AdvisedError::Read(advisory.stream_seq, e))?;
    let msg_id = original
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_string());
    deadletters
        .publish(
            Original {
                subject: original.subject.as_str(),
                stream_sequence: advisory.stream_seq,
                msg_id: msg_id.as_deref(),
                payload: original.payload.clone(),
            },
            reason,
            &detail,
        )
        .await?;
    Ok(())
}
