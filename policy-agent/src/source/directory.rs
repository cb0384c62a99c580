//! A directory of manifests as a source: read at start, and again whenever a file in it
//! changes (bursts of changes are read once).
//!
//! A file is never read while it is being written: from the first modification until the
//! writer closes it (inotify's `IN_CLOSE_WRITE`), what it had stays in force and `status`
//! says it is being written. An editor saving in place, `kubectl get -o yaml > file` or a
//! copy writes in pieces, and a piece can parse and mean less than the whole (an empty
//! file deletes every policy it held; `cidr: 10.0.0.0/16` cut to `10.0.0.0/1` admits far
//! more). Renaming a complete file into place is read at once.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
};
use tokio::sync::mpsc;

use super::{CHANNEL_CAPACITY, SourceEvent, manifests};

/// How long to wait for an editor's burst of writes to settle before reading.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How long after a read the events of writes made during it may take to arrive: a read
/// they overlapped is not sent (it may have caught a file half-written).
const EVENT_LATENCY: Duration = Duration::from_millis(20);
/// Changes buffered between the watcher's thread and the reader; more mean "read again".
const CHANGES: usize = 4096;

/// What happened to a file of the directory.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Created or modified: being written until it is closed.
    Writing(PathBuf),
    /// Closed after writing, or renamed into place: complete.
    Complete(PathBuf),
    /// Removed or renamed away.
    Gone(PathBuf),
    /// Anything else that may change what the directory holds (metadata, a rescan).
    Other,
}

/// The changes one watcher event reports; our own reads (opens, closes without writing)
/// report none.
fn changes(event: notify::Event) -> Vec<Change> {
    let each = |f: fn(PathBuf) -> Change| event.paths.iter().cloned().map(f).collect();
    match event.kind {
        EventKind::Create(CreateKind::Folder) => vec![Change::Other],
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => each(Change::Writing),
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => each(Change::Complete),
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            each(Change::Gone)
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut paths = event.paths.into_iter();
            paths
                .next()
                .map(Change::Gone)
                .into_iter()
                .chain(paths.map(Change::Complete))
                .collect()
        }
        EventKind::Access(_) => Vec::new(),
        _ => vec![Change::Other],
    }
}

/// Files modified and not closed yet, and since when.
#[derive(Default)]
struct Busy(BTreeMap<PathBuf, Instant>);

impl Busy {
    /// Takes in `change`; whether it may have overlapped a read that left out `read_busy`
    /// (a file started being written that the read did not leave out).
    fn apply(&mut self, change: Change, read_busy: &BTreeMap<PathBuf, Instant>) -> bool {
        match change {
            Change::Writing(path) => {
                let overlapped = !read_busy.contains_key(&path);
                self.0.entry(path).or_insert_with(Instant::now);
                overlapped
            }
            Change::Complete(path) | Change::Gone(path) => {
                self.0.remove(&path);
                false
            }
            Change::Other => false,
        }
    }
}

/// Starts watching `dir`; the first event is its contents.
pub fn watch(dir: PathBuf) -> anyhow::Result<mpsc::Receiver<SourceEvent>> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (changed_tx, mut changed) = mpsc::channel::<Change>(CHANGES);
    // Set when changes were lost (a full channel, a watcher error): read again.
    let lost = Arc::new(AtomicBool::new(false));
    let lost_by_watcher = lost.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let changes = match event {
            Ok(event) => changes(event),
            Err(_) => vec![Change::Other],
        };
        for change in changes {
            if changed_tx.try_send(change).is_err() {
                lost_by_watcher.store(true, Ordering::Relaxed);
                let _ = changed_tx.try_send(Change::Other);
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        // What a bad edit fails to say stays as it was last said.
        let mut last = manifests::LastGood::default();
        let mut busy = Busy::default();
        loop {
            // Reading and parsing a large directory takes time: on a thread of its own, so
            // that the runtime's workers keep answering the agent's API (CNI ADDs, status).
            let read_busy = busy.0.clone();
            let read = {
                let (dir, read_busy) = (dir.clone(), read_busy.clone());
                tokio::task::spawn_blocking(move || {
                    let loaded = manifests::load_dir_busy(&dir, &mut last, &read_busy);
                    (loaded, last)
                })
            };
            let Ok((loaded, kept)) = read.await else {
                return;
            };
            // A write that began during the read may have been caught half-way: read
            // again (what the read kept as last good is whole, or kept from before).
            last = kept;
            tokio::time::sleep(EVENT_LATENCY).await;
            let (mut overlapped, mut more) = (false, false);
            while let Ok(change) = changed.try_recv() {
                more = true;
                overlapped |= busy.apply(change, &read_busy);
            }
            if overlapped || lost.swap(false, Ordering::Relaxed) {
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            let event = match loaded {
                Ok(loaded) => SourceEvent::Snapshot {
                    errors: loaded.errors.iter().map(ToString::to_string).collect(),
                    cluster: Box::new(loaded.cluster),
                },
                Err(e) => SourceEvent::Error(format!("{e:#}")),
            };
            if tx.send(event).await.is_err() {
                return;
            }
            // Changes that came during the read (a file it left out was closed since) need
            // another read; else wait for one.
            if !more {
                let Some(change) = changed.recv().await else {
                    return;
                };
                busy.apply(change, &BTreeMap::new());
            }
            tokio::time::sleep(SETTLE).await;
            while let Ok(change) = changed.try_recv() {
                busy.apply(change, &BTreeMap::new());
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written in pieces is left out from its first write to its close, and a file
    /// renamed into place is complete at once.
    #[test]
    fn a_file_is_busy_from_its_first_write_until_it_is_closed() {
        let f = PathBuf::from("/d/p.yaml");
        let event = |kind| notify::Event::new(kind).add_path(f.clone());
        let mut busy = Busy::default();
        let none = BTreeMap::new();
        for change in changes(event(EventKind::Modify(ModifyKind::Data(
            notify::event::DataChange::Any,
        )))) {
            assert!(
                busy.apply(change, &none),
                "a read that did not leave it out"
            );
        }
        assert!(busy.0.contains_key(&f));
        let during = busy.0.clone();
        for change in changes(event(EventKind::Modify(ModifyKind::Data(
            notify::event::DataChange::Any,
        )))) {
            assert!(!busy.apply(change, &during), "the read left it out");
        }
        assert_eq!(
            changes(event(EventKind::Access(AccessKind::Open(AccessMode::Any)))),
            []
        );
        for change in changes(event(EventKind::Access(AccessKind::Close(
            AccessMode::Write,
        )))) {
            busy.apply(change, &none);
        }
        assert!(busy.0.is_empty());
        assert_eq!(
            changes(event(EventKind::Modify(ModifyKind::Name(RenameMode::To)))),
            [Change::Complete(f.clone())]
        );
    }
}
