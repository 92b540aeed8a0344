//! JetStream atomic batches (server 2.12 or newer): several messages, each with its own
//! expectations, that the server stores together or not at all.

use crate::bucket::Bucket;
use crate::error::NatsError;
use crate::wire;
use async_nats::HeaderMap;
use bytes::Bytes;

/// One message of a batch.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    // The op's index, to place the message's revision in the results, or CHECK_ONLY.
    pub(crate) op: usize,
}

/// Marks a scratch message that only carries a check.
pub(crate) const CHECK_ONLY: usize = usize::MAX;

/// Publishes the messages as one atomic batch; returns the last message's sequence.
/// A failure before the commit message is sent leaves nothing applied
/// ([`NatsError::NotApplied`]); a commit without an answer is [`NatsError::Unknown`]; a
/// refusal of the batch is [`NatsError::Api`].
pub(crate) async fn publish_batch(
    bucket: &Bucket,
    operation: &str,
    messages: &[Message],
) -> Result<u64, NatsError> {
    let client = &bucket.client;
    // Sends one message of the batch and waits for the server's answer.
    let ask = |message: &Message, headers: HeaderMap| {
        wire::request(
            client,
            bucket.request_timeout,
            operation,
            message.subject.clone(),
            headers,
            message.payload.clone(),
        )
    };
    if let [message] = messages {
        let reply = ask(message, message.headers.clone()).await?;
        return Ok(wire::parse_ack(&reply.payload, operation)?.sequence);
    }
    let inbox = client.new_inbox();
    let batch_id = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
    let last = messages.len() - 1;
    for (index, message) in messages.iter().enumerate() {
        let mut headers = message.headers.clone();
        headers.insert(wire::BATCH_ID, batch_id.as_str());
        headers.insert(wire::BATCH_SEQUENCE, (index + 1).to_string().as_str());
        if index == last {
            headers.insert(wire::BATCH_COMMIT, "1");
            let reply = ask(message, headers).await?;
            return Ok(wire::parse_ack(&reply.payload, operation)?.sequence);
        }
        if index == 0 {
            // The server answers the first message: an empty reply starts the batch.
            let reply = ask(message, headers)
                .await
                .map_err(|err| never_applied(operation, err))?;
            if !reply.payload.is_empty() {
                // A refusal of the whole batch, before anything was stored.
                wire::parse_ack(&reply.payload, operation)?;
            }
        } else {
            client
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await
                .map_err(|err| NatsError::NotApplied {
                    message: format!("{operation}: batch message not sent: {err}"),
                })?;
        }
    }
    unreachable!("the loop returns at the commit message")
}

/// Before the commit message, nothing can have applied.
fn never_applied(operation: &str, err: NatsError) -> NatsError {
    match err {
        NatsError::Unknown { message, .. } => NatsError::NotApplied {
            message: format!(
                "{operation}: batch start not acknowledged, nothing applied: {message}"
            ),
        },
        other => other,
    }
}
