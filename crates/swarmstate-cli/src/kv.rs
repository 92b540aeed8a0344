//! The etcdctl-style commands: `get`, `put`, `del`, `keys`, `watch`, `txn`, `status`.
//!
//! Output is plain text by default (a value as its bytes; one key, event or field per line)
//! and one JSON object per line with `-o json`, in the HTTP API's shapes.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use swarmstate::http::wire::{TxnRequest, WireEntry, WireOp, WireResult, json as to_json};
use swarmstate::{
    Error, Key, Pattern, PutMode, PutOptions, Revision, StateStore, StateStoreExt, TxnOp,
    WatchEvent, WatchStart,
};

use crate::exit;
use crate::open::open_store;

/// How a command prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Values as they are, other things as words.
    Text,
    /// One JSON object per line.
    Json,
}

fn key(text: &str) -> anyhow::Result<Key> {
    Ok(Key::new_reserved(text)?)
}

fn revision(n: u64) -> anyhow::Result<Revision> {
    Revision::new(n).context("0 is never a revision")
}

/// `get KEY`: the value (exit 1 when the key is absent).
pub(crate) async fn get(store: &str, text: &str, output: Output) -> anyhow::Result<ExitCode> {
    let key = key(text)?;
    let store = open_store(store).await?;
    let Some(entry) = store.get(&key).await? else {
        eprintln!("swarmstate: {key} not found");
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    let mut stdout = std::io::stdout().lock();
    match output {
        Output::Text => {
            stdout.write_all(&entry.value)?;
            if !entry.value.ends_with(b"\n") {
                stdout.write_all(b"\n")?;
            }
        }
        Output::Json => writeln!(stdout, "{}", to_json(&WireEntry::from_entry(&entry)))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What `put` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct PutArgs {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) create: bool,
    pub(crate) if_rev: Option<u64>,
    pub(crate) idempotency_key: Option<String>,
}

/// `put KEY VALUE|-`: prints the new revision (exit 1 when a condition failed).
pub(crate) async fn put(store: &str, args: PutArgs) -> anyhow::Result<ExitCode> {
    let key = key(&args.key)?;
    let value = if args.value == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the value from stdin")?;
        Bytes::from(bytes)
    } else {
        Bytes::from(args.value.into_bytes())
    };
    let mode = match (args.create, args.if_rev) {
        (true, Some(_)) => anyhow::bail!("--create and --if-rev cannot both be given"),
        (true, None) => PutMode::Create,
        (false, Some(n)) => PutMode::Update(revision(n)?),
        (false, None) => PutMode::Overwrite,
    };
    let mut options = PutOptions::with_mode(mode);
    options.ttl = args.ttl;
    options.idempotency_key = args.idempotency_key;
    let store = open_store(store).await?;
    let written = store.put(&key, value, options).await?;
    println!("{written}");
    Ok(ExitCode::SUCCESS)
}

/// `del KEY`: prints the delete's revision (exit 1 when the key was absent or a condition
/// failed).
pub(crate) async fn del(store: &str, text: &str, if_rev: Option<u64>) -> anyhow::Result<ExitCode> {
    let key = key(text)?;
    let expected = if_rev.map(revision).transpose()?;
    let store = open_store(store).await?;
    match store.delete(&key, expected).await? {
        Some(revision) => {
            println!("{revision}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("swarmstate: {key} not found");
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
    }
}

/// `keys PATTERN`: one key per line, in key order.
pub(crate) async fn keys(store: &str, text: &str) -> anyhow::Result<ExitCode> {
    let pattern = Pattern::new(text)?;
    let store = open_store(store).await?;
    let keys = store.list_keys(&pattern).await?;
    let mut stdout = std::io::stdout().lock();
    for key in keys {
        writeln!(stdout, "{key}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `watch PATTERN`: one event per line until Ctrl-C. A lagged watch ends with exit 2 and says
/// where to resume.
pub(crate) async fn watch(
    store: &str,
    text: &str,
    start: WatchStart,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let pattern = Pattern::new(text)?;
    let store = open_store(store).await?;
    let mut events = store.watch(&pattern, start).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
        };
        let Some(event) = event else {
            eprintln!("swarmstate: the watch ended: the store closed");
            return Ok(ExitCode::from(exit::ERROR));
        };
        let line = match output {
            Output::Text => event_text(&event),
            Output::Json => event_json(&event),
        };
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
        }
        if let WatchEvent::Lagged { resume_from } = event {
            eprintln!(
                "swarmstate: the watch fell behind; resume with --from {resume_from}, or \
                 --snapshot"
            );
            return Ok(ExitCode::from(exit::ERROR));
        }
    }
}

fn event_text(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Put(entry) => format!(
            "put {} {} {}",
            entry.key,
            entry.revision,
            String::from_utf8_lossy(&entry.value)
        ),
        WatchEvent::Delete { key, revision } => format!("delete {key} {revision}"),
        WatchEvent::Expire { key, revision } => format!("expire {key} {revision}"),
        WatchEvent::CaughtUp { revision } => match revision {
            Some(revision) => format!("caught-up {revision}"),
            None => "caught-up".to_owned(),
        },
        WatchEvent::Lagged { resume_from } => format!("lagged {resume_from}"),
    }
}

fn event_json(event: &WatchEvent) -> String {
    let value = match event {
        WatchEvent::Put(entry) => {
            let mut value =
                serde_json::to_value(WireEntry::from_entry(entry)).expect("entries serialize");
            value["type"] = json!("put");
            value
        }
        WatchEvent::Delete { key, revision } => {
            json!({"type": "delete", "key": key.as_str(), "revision": revision.get()})
        }
        WatchEvent::Expire { key, revision } => {
            json!({"type": "expire", "key": key.as_str(), "revision": revision.get()})
        }
        WatchEvent::CaughtUp { revision } => {
            json!({"type": "caught_up", "revision": revision.map(Revision::get)})
        }
        WatchEvent::Lagged { resume_from } => {
            json!({"type": "lagged", "resume_from": resume_from.get()})
        }
    };
    value.to_string()
}

/// `txn`: operations as JSON on stdin (`{"ops": [...]}` or the bare list, in the HTTP API's
/// shape); prints the results as JSON (exit 1 when a condition failed, naming it).
pub(crate) async fn txn(store: &str) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the transaction from stdin")?;
    let wire: Vec<WireOp> = match serde_json::from_str::<TxnRequest>(&text) {
        Ok(request) => request.ops,
        Err(_) => serde_json::from_str(&text).context(
            "the transaction on stdin is not JSON of the shape {\"ops\": [{\"op\": \"put\", \
             \"key\": \"a\", \"value\": \"1\"}, ...]}",
        )?,
    };
    let ops: Vec<TxnOp> = wire
        .into_iter()
        .enumerate()
        .map(|(index, op)| op.into_op(index))
        .collect::<Result<_, Error>>()?;
    let store = open_store(store).await?;
    let results = store.txn(ops).await?;
    let results: Vec<WireResult> = results.iter().map(WireResult::from_result).collect();
    println!("{}", json!({ "results": results }));
    Ok(ExitCode::SUCCESS)
}

/// `status`: what the store is and where it stands.
pub(crate) async fn status(store_url: &str, output: Output) -> anyhow::Result<ExitCode> {
    // A server has more to say about itself than the store behind it.
    let (store, server): (std::sync::Arc<dyn StateStore>, _) = if store_url.starts_with("http://") {
        let http = swarmstate::http::HttpStore::open(store_url).await?;
        let status = http.status().await?;
        (std::sync::Arc::new(http), Some(status))
    } else {
        (open_store(store_url).await?, None)
    };
    let revision = store.current_revision().await?;
    let capabilities = store.capabilities();
    let backend = server
        .as_ref()
        .map_or(capabilities.backend.to_owned(), |s| s.backend.clone());
    let value = json!({
        "store": store_url,
        "backend": backend,
        "revision": revision.map(Revision::get),
        "durable": capabilities.durable,
        "max_value_size": capabilities.max_value_size,
        "ttl_granularity_ms": u64::try_from(capabilities.ttl_granularity.as_millis()).unwrap_or(u64::MAX),
        "watch_buffer": capabilities.watch_buffer,
        "server": server,
    });
    match output {
        Output::Json => println!("{value}"),
        Output::Text => {
            let mut stdout = std::io::stdout().lock();
            if let Some(server) = &server {
                writeln!(
                    stdout,
                    "{:<19} {store_url} (swarmstate {})",
                    "server", server.version
                )?;
            }
            for field in [
                "backend",
                "revision",
                "durable",
                "max_value_size",
                "ttl_granularity_ms",
                "watch_buffer",
            ] {
                writeln!(stdout, "{field:<19} {}", value[field])?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
