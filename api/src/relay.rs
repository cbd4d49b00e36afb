//! Publishing the change feed to NATS JetStream.
//!
//! The relay reads the feed in order from the last position it recorded as published, publishes
//! each event (subject `storefront.events.<type>`, header `Nats-Msg-Id` = the event id, body the
//! `Event` as `GET /v1/events` answers it), waits for JetStream's acknowledgements, and only then
//! records the new position in the database. A crash between the two re-sends what was not
//! recorded, and JetStream's de-duplication by `Nats-Msg-Id` absorbs the re-sends: at least once
//! on the wire, once in the stream.
//!
//! With several instances, one publishes at a time: it holds a lease in the database
//! (`event_relays`), renewed with every batch and every idle wait; a publisher that dies stops
//! renewing, and another instance takes the lease over once it has run out.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream;
use uuid::Uuid;

use crate::store::events::Events;

pub const STREAM: &str = "STOREFRONT";
pub const SUBJECT_PREFIX: &str = "storefront.events";
/// The relay's name in `event_relays`.
const RELAY: &str = "nats";
/// How long a lease runs unrenewed: a dead publisher is replaced within about this.
const LEASE: Duration = Duration::from_secs(3);
/// Events published per round, each round ending in one recorded position.
const BATCH: u64 = 256;
/// JetStream drops a re-sent message id seen within this window.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("cannot reach NATS: {0}")]
    Connect(String),
    #[error("JetStream refused: {0}")]
    JetStream(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Publishes until the task is aborted, reconnecting after failures.
pub fn spawn(url: String, events: Events) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let holder = format!("relay-{}", Uuid::now_v7().simple());
        let mut backoff = Duration::from_millis(200);
        loop {
            if let Err(err) = publish(&url, &events, &holder).await {
                tracing::warn!(error = %err, "the change feed's NATS relay stopped; restarting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

fn lease_end() -> chrono::DateTime<chrono::FixedOffset> {
    (chrono::Utc::now() + LEASE).fixed_offset()
}

async fn publish(url: &str, events: &Events, holder: &str) -> Result<(), RelayError> {
    let client = async_nats::connect(url)
        .await
        .map_err(|err| RelayError::Connect(err.to_string()))?;
    let jetstream = jetstream::new(client);
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|err| RelayError::JetStream(err.to_string()))?;
    let mut leading = false;
    loop {
        let Some(published) = events.log.lease(RELAY, holder, lease_end()).await? else {
            if leading {
                tracing::info!("another instance now publishes the change feed");
                leading = false;
            }
            tokio::time::sleep(LEASE / 3).await;
            continue;
        };
        if !leading {
            tracing::info!(after = published, "publishing the change feed to NATS");
            leading = true;
        }
        let batch = events.log.after(published, BATCH).await?;
        let Some(last) = batch.last().map(|event| event.position) else {
            events.feed.wait_past(published, LEASE / 3).await;
            continue;
        };
        let mut acknowledgements = Vec::with_capacity(batch.len());
        for event in batch {
            let subject = format!("{SUBJECT_PREFIX}.{}", event.kind.as_str());
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, event.id.to_string().as_str());
            let body = crate::http::events::body(event);
            let acknowledgement = jetstream
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|err| RelayError::JetStream(err.to_string()))?;
            acknowledgements.push(acknowledgement);
        }
        for acknowledgement in acknowledgements {
            acknowledgement
                .await
                .map_err(|err| RelayError::JetStream(err.to_string()))?;
        }
        if !events
            .log
            .published(RELAY, holder, last, lease_end())
            .await?
        {
            tracing::warn!("lost the change feed's publishing lease mid-batch");
        }
    }
}
