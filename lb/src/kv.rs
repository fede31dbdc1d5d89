//! The JetStream key-value bucket of operator-published VIPs (`lb_vips`: key = VIP name, value = one VIP as JSON).
//!
//! The bucket is what lets a fleet of LBs agree and a restarted LB lose nothing: every `lb` watches it, and
//! operators write it with `lb vip put|rm`. The watch replays the bucket's kept history (a few values per key) in
//! order and then follows changes, and says when the replay is over, because `lb` must not delete a service for a
//! VIP it simply has not read yet. Replaying history rather than only the latest values is what lets a restarted
//! `lb` keep a VIP's last valid value when the newest one is broken, exactly as the running `lb` did. Whoever
//! touches the bucket first creates it, so neither side depends on the other starting first.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

/// Values kept per key, so an operator can see what a VIP was before a bad update.
const HISTORY: i64 = 5;
/// How long a read of the whole bucket may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the bucket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket could not be opened or created.
    #[error("could not open or create the VIP bucket `{bucket}`: {detail}")]
    Bucket {
        /// Bucket name.
        bucket: String,
        /// What the server said.
        detail: String,
    },
    /// Reading the bucket failed or took too long.
    #[error("could not read the VIP bucket: {0}")]
    Read(String),
    /// Writing the bucket failed.
    #[error("could not write the VIP bucket: {0}")]
    Write(String),
}

/// One change in the bucket, as the watch reports it.
#[derive(Debug, Clone)]
pub enum KvEvent {
    /// A key got a value.
    Put {
        /// VIP name.
        key: String,
        /// Stream sequence of this value; lower means published earlier.
        revision: u64,
        /// The JSON.
        value: Bytes,
    },
    /// A key was deleted or purged.
    Delete {
        /// VIP name.
        key: String,
    },
    /// Every key's current value has been delivered; later events are live changes.
    Loaded,
}

/// Opens the bucket, creating it when it does not exist yet.
pub async fn open(client: &async_nats::Client, bucket: &str) -> Result<kv::Store, KvError> {
    let context = jetstream::new(client.clone());
    if let Ok(store) = context.get_key_value(bucket).await {
        return Ok(store);
    }
    // The stream a KV bucket is (ADR-8), created directly: async-nats's `create_key_value` first reads account
    // details in a shape nats-server 2.9 does not send.
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("Switchyard lb VIPs".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: HISTORY,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    // Creation fails if someone else created it in between; what counts is whether it can be opened now.
    let created = context.create_stream(config).await;
    context.get_key_value(bucket).await.map_err(|err| {
        let detail = created.err().map_or_else(|| err.to_string(), |create| create.to_string());
        KvError::Bucket { bucket: bucket.to_owned(), detail }
    })
}

/// Opens the bucket if it exists; never creates it (for commands that must change nothing).
pub async fn open_existing(client: &async_nats::Client, bucket: &str) -> Result<Option<kv::Store>, KvError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    let context = jetstream::new(client.clone());
    // Ask for the stream first to tell "no such bucket" (empty) from "JetStream unreachable" (an error).
    match context.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(err) => {
            if let GetStreamErrorKind::JetStream(inner) = err.kind()
                && inner.error_code() == ErrorCode::STREAM_NOT_FOUND
            {
                return Ok(None);
            }
            return Err(KvError::Read(format!("{err}; is JetStream enabled on the server (nats-server -js)?")));
        }
    }
    context.get_key_value(bucket).await.map(Some).map_err(|err| KvError::Bucket { bucket: bucket.to_owned(), detail: err.to_string() })
}

/// The whole kept history of the bucket, in order, as the watch of a running `lb` replays it at start.
pub async fn replay(store: &kv::Store) -> Result<Vec<KvEvent>, KvError> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let read = async {
        let (mut watch, loaded) = start_watch(store, &sender).await?;
        forward(&mut watch, &sender, loaded, true).await
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| KvError::Read(format!("no complete answer within {}s", READ_TIMEOUT.as_secs())))??;
    drop(sender);
    let mut events = Vec::new();
    while let Some(event) = receiver.recv().await {
        events.push(event);
    }
    Ok(events)
}

/// Every key's current value, in revision order.
pub async fn snapshot(store: &kv::Store) -> Result<Vec<(String, u64, Bytes)>, KvError> {
    let mut values = std::collections::BTreeMap::new();
    for event in replay(store).await? {
        match event {
            KvEvent::Put { key, revision, value } => {
                values.insert(key, (revision, value));
            }
            KvEvent::Delete { key } => {
                values.remove(&key);
            }
            KvEvent::Loaded => {}
        }
    }
    let mut entries: Vec<(String, u64, Bytes)> = values.into_iter().map(|(key, (revision, value))| (key, revision, value)).collect();
    entries.sort_by_key(|(_, revision, _)| *revision);
    Ok(entries)
}

/// Starts a watch that replays every kept value, then follows changes. Sends [`KvEvent::Loaded`] at once when
/// the bucket is empty (no entry would ever say so), and returns whether it did.
async fn start_watch(store: &kv::Store, events: &mpsc::UnboundedSender<KvEvent>) -> Result<(kv::Watch, bool), KvError> {
    let status = store.status().await.map_err(|e| KvError::Read(e.to_string()))?;
    let watch = store.watch_all_from_revision(1).await.map_err(|e| KvError::Read(e.to_string()))?;
    let empty = status.values() == 0;
    if empty {
        let _ = events.send(KvEvent::Loaded);
    }
    Ok((watch, empty))
}

fn event_of(entry: kv::Entry) -> KvEvent {
    match entry.operation {
        kv::Operation::Put => KvEvent::Put { key: entry.key, revision: entry.revision, value: entry.value },
        kv::Operation::Delete | kv::Operation::Purge => KvEvent::Delete { key: entry.key },
    }
}

/// Forwards entries to `events`. With `until_loaded` it returns once every current value was delivered;
/// otherwise it runs until the watch fails or nobody listens any more.
async fn forward(watch: &mut kv::Watch, events: &mpsc::UnboundedSender<KvEvent>, mut loaded: bool, until_loaded: bool) -> Result<(), KvError> {
    if loaded && until_loaded {
        return Ok(());
    }
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| KvError::Read(e.to_string()))?;
        let current = entry.delta == 0;
        if events.send(event_of(entry)).is_err() {
            return Ok(());
        }
        if current && !loaded {
            loaded = true;
            let _ = events.send(KvEvent::Loaded);
            if until_loaded {
                return Ok(());
            }
        }
    }
    Err(KvError::Read("the watch ended".to_owned()))
}

/// Watches the bucket for as long as `events` is open, reconnecting after errors. Sends [`KvEvent::Loaded`] after
/// each full read (the first one matters; after a re-watch it is harmless).
pub async fn watch(client: async_nats::Client, bucket: String, events: mpsc::UnboundedSender<KvEvent>) {
    let mut delay = Duration::from_millis(200);
    while !events.is_closed() {
        match watch_once(&client, &bucket, &events).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, "VIP bucket watch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn watch_once(client: &async_nats::Client, bucket: &str, events: &mpsc::UnboundedSender<KvEvent>) -> Result<(), KvError> {
    let store = open(client, bucket).await?;
    let (mut watch, loaded) = start_watch(&store, events).await?;
    forward(&mut watch, events, loaded, false).await
}

/// Publishes one VIP; returns its revision.
pub async fn put(store: &kv::Store, name: &str, value: Bytes) -> Result<u64, KvError> {
    store.put(name, value).await.map_err(|e| KvError::Write(e.to_string()))
}

/// Deletes one VIP; returns whether it existed.
pub async fn remove(store: &kv::Store, name: &str) -> Result<bool, KvError> {
    let existed = store.get(name).await.map_err(|e| KvError::Read(e.to_string()))?.is_some();
    if existed {
        store.delete(name).await.map_err(|e| KvError::Write(e.to_string()))?;
    }
    Ok(existed)
}
