//! The flow records a lab node's agent streams, collected while a test runs.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use policy_agent::{agent::api, agent::flows::FlowRecord, lab::Lab};
use tokio::task::JoinHandle;

/// How long a subscription takes to reach the agent (a local socket: far less).
const SUBSCRIBE: Duration = Duration::from_millis(300);

/// Flow records of one node's agent, from the moment the watch started.
pub struct Records {
    seen: Arc<Mutex<Vec<FlowRecord>>>,
    task: JoinHandle<()>,
}

impl Records {
    /// Subscribes to node `node`'s flow records.
    pub async fn watch(lab: &Lab, node: usize) -> Self {
        let socket: PathBuf = lab.socket(node).expect("an enforced lab").to_owned();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let _ = api::flows(&socket, |r| {
                sink.lock().expect("not poisoned").push(r);
                true
            })
            .await;
        });
        tokio::time::sleep(SUBSCRIBE).await;
        Self { seen, task }
    }

    /// The first record matching `wanted`, waiting up to `within` for it.
    pub async fn find(
        &self,
        within: Duration,
        wanted: impl Fn(&FlowRecord) -> bool,
    ) -> Option<FlowRecord> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let found = self.all().into_iter().find(|r| wanted(r));
            if found.is_some() {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record so far.
    pub fn all(&self) -> Vec<FlowRecord> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        self.task.abort();
    }
}
