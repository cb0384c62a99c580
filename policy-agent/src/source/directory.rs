//! A directory of manifests as a source: read at start, and again whenever a file in it
//! changes (bursts of changes are read once).

use std::{path::PathBuf, time::Duration};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{CHANNEL_CAPACITY, SourceEvent, manifests};

/// How long to wait for an editor's burst of writes to settle before reading.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching `dir`; the first event is its contents.
pub fn watch(dir: PathBuf) -> anyhow::Result<mpsc::Receiver<SourceEvent>> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads are events too; only changes count. A full channel already means
        // "read again".
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = changed_tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        // What a bad edit fails to say stays as it was last said.
        let mut last = manifests::LastGood::default();
        loop {
            // Reading and parsing a large directory takes time: on a thread of its own, so
            // that the runtime's workers keep answering the agent's API (CNI ADDs, status).
            let read = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let loaded = manifests::load_dir_with(&dir, &mut last);
                    (loaded, last)
                })
            };
            let Ok((loaded, kept)) = read.await else {
                return;
            };
            last = kept;
            let event = match loaded {
                Ok(loaded) => SourceEvent::Snapshot {
                    errors: loaded.errors.iter().map(ToString::to_string).collect(),
                    cluster: Box::new(loaded.cluster),
                },
                Err(e) => SourceEvent::Error(format!("{e:#}")),
            };
            if tx.send(event).await.is_err() || changed.recv().await.is_none() {
                return;
            }
            tokio::time::sleep(SETTLE).await;
            while changed.try_recv().is_ok() {}
        }
    });
    Ok(rx)
}
