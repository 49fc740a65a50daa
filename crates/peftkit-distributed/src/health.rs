//! Which rank failed: each rank beats on its own store connection; after a collective fails, the
//! survivors read the beats to name the rank that died, hung or reported an error.

use crate::store::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The background thread publishing `beat/<rank>` = "<count> <collective seq>".
#[derive(Debug)]
pub(crate) struct Heartbeat {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub(crate) fn start(
        store: Arc<Store>,
        rank: usize,
        interval: Duration,
        seq: Arc<AtomicU64>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("peftkit-heartbeat-{rank}"))
            .spawn(move || {
                let key = format!("beat/{rank}");
                let mut count = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    count += 1;
                    let value = format!("{count} {}", seq.load(Ordering::Relaxed));
                    if store.set(&key, value.as_bytes()).is_err() {
                        return; // the store is gone: the survivors' diagnosis says so
                    }
                    // Sleep in short slices so that dropping the group is prompt.
                    let mut slept = Duration::ZERO;
                    while slept < interval && !flag.load(Ordering::Relaxed) {
                        let slice = Duration::from_millis(20).min(interval - slept);
                        std::thread::sleep(slice);
                        slept += slice;
                    }
                }
            })
            .expect("spawning the heartbeat thread");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn read_beat(store: &Store, rank: usize) -> Option<(u64, u64)> {
    let key = format!("beat/{rank}");
    if !store.contains(&key).ok()? {
        return None;
    }
    let v = String::from_utf8(store.get(&key).ok()?).ok()?;
    let (count, seq) = v.split_once(' ')?;
    Some((count.parse().ok()?, seq.parse().ok()?))
}

fn read_failure(store: &Store, rank: usize) -> Option<String> {
    let key = format!("failed/{rank}");
    if !store.contains(&key).ok()? {
        return None;
    }
    String::from_utf8(store.get(&key).ok()?).ok()
}

/// What the other ranks are doing, in one sentence per rank that is not well: read the beats
/// twice, `wait` apart; a rank whose count did not move has stopped, one behind `my_seq` is stuck.
pub(crate) fn diagnose(
    store: &Store,
    my_rank: usize,
    world: usize,
    my_seq: u64,
    wait: Duration,
) -> Vec<String> {
    let first: Vec<_> = (0..world).map(|r| read_beat(store, r)).collect();
    let mut causes: Vec<String> = (0..world)
        .filter(|&r| r != my_rank)
        .filter_map(|r| read_failure(store, r).map(|m| format!("rank {r} failed: {m}")))
        .collect();
    if !causes.is_empty() {
        return causes;
    }
    std::thread::sleep(wait);
    for r in (0..world).filter(|&r| r != my_rank) {
        match (first[r], read_beat(store, r)) {
            (_, None) => causes.push(format!("rank {r} never reported in")),
            (Some((c0, _)), Some((c1, _))) if c0 == c1 => causes.push(format!(
                "rank {r} stopped responding (no heartbeat for {:.1} s: killed, crashed or stopped)",
                wait.as_secs_f64()
            )),
            (_, Some((_, seq))) if seq < my_seq => causes.push(format!(
                "rank {r} is alive but has not reached collective #{my_seq} (it is at #{seq}): stuck, or slower than the timeout"
            )),
            _ => {}
        }
    }
    causes
}

/// Publishes this rank's own failure for the others' diagnosis.
pub(crate) fn publish_failure(store: &Store, rank: usize, message: &str) {
    let _ = store.set(&format!("failed/{rank}"), message.as_bytes());
}
