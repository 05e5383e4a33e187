//! The fence's rules within one process: sharing, exclusion, phase
//! fairness, no starvation under a steady stream, cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn fence() -> Fence {
    Fence::new(None)
}

async fn enters_within(f: &Fence, class: Class, ms: u64) -> Option<FenceGuard> {
    tokio::time::timeout(Duration::from_millis(ms), f.enter(class))
        .await
        .ok()
        .map(|r| r.expect("no lock shard, no error"))
}

#[tokio::test]
async fn a_class_shares_with_itself() {
    let f = fence();
    let a = enters_within(&f, Class::Commit, 100).await.unwrap();
    let b = enters_within(&f, Class::Commit, 100).await;
    assert!(b.is_some(), "a second committer waited");
    drop((a, b));
    let a = enters_within(&f, Class::Snapshot, 100).await.unwrap();
    let b = enters_within(&f, Class::Snapshot, 100).await;
    assert!(b.is_some(), "a second snapshot-taker waited");
    drop((a, b));
}

#[tokio::test]
async fn the_classes_exclude_each_other() {
    let f = fence();
    let c = enters_within(&f, Class::Commit, 100).await.unwrap();
    assert!(enters_within(&f, Class::Snapshot, 50).await.is_none());
    let f2 = f.clone();
    let reader = tokio::spawn(async move { f2.enter(Class::Snapshot).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!reader.is_finished(), "a reader entered beside a committer");
    drop(c);
    tokio::time::timeout(Duration::from_secs(1), reader)
        .await
        .expect("the reader enters once the committer left")
        .unwrap()
        .unwrap();
    let s = enters_within(&f, Class::Snapshot, 100).await.unwrap();
    assert!(enters_within(&f, Class::Commit, 50).await.is_none());
    drop(s);
    assert!(enters_within(&f, Class::Commit, 100).await.is_some());
}

#[tokio::test]
async fn newcomers_queue_behind_a_waiting_class() {
    let f = fence();
    let c1 = enters_within(&f, Class::Commit, 100).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |class: Class, name: &'static str, hold: u64| {
        let f = f.clone();
        let order = order.clone();
        tokio::spawn(async move {
            let g = f.enter(class).await.unwrap();
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(hold)).await;
            drop(g);
        })
    };
    let s = spawn(Class::Snapshot, "snapshot", 30);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The committers' batch is open, but a reader waits: c2 must queue.
    let c2 = spawn(Class::Commit, "commit2", 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        order.lock().unwrap().is_empty(),
        "someone entered beside c1"
    );
    drop(c1);
    s.await.unwrap();
    c2.await.unwrap();
    assert_eq!(*order.lock().unwrap(), vec!["snapshot", "commit2"]);
}

/// A steady stream of overlapping committers never keeps a reader out
/// for long, and a steady stream of readers never keeps a committer out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_class_starves() {
    for (stream, lone) in [
        (Class::Commit, Class::Snapshot),
        (Class::Snapshot, Class::Commit),
    ] {
        let f = fence();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let entered = Arc::new(AtomicUsize::new(0));
        let mut streamers = Vec::new();
        for _ in 0..4 {
            let (f, stop, entered) = (f.clone(), stop.clone(), entered.clone());
            streamers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let g = f.enter(stream).await.unwrap();
                    entered.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    drop(g);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..10 {
            let t = std::time::Instant::now();
            let g = enters_within(&f, lone, 500).await;
            assert!(
                g.is_some(),
                "{lone:?} starved behind a stream of {stream:?}"
            );
            assert!(t.elapsed() < Duration::from_millis(200));
            drop(g);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for s in streamers {
            s.await.unwrap();
        }
        assert!(
            entered.load(Ordering::Relaxed) > 10,
            "the stream made progress"
        );
    }
}

#[tokio::test]
async fn a_cancelled_waiter_leaves_nothing_behind() {
    let f = fence();
    let c = enters_within(&f, Class::Commit, 100).await.unwrap();
    // A reader gives up while it waits (its client disconnected).
    assert!(enters_within(&f, Class::Snapshot, 30).await.is_none());
    // Its count is gone: another committer may still join the open batch.
    assert!(enters_within(&f, Class::Commit, 100).await.is_some());
    drop(c);
    // Nothing is held: both classes enter at once.
    let s = enters_within(&f, Class::Snapshot, 100).await;
    assert!(s.is_some());
    drop(s);
    assert!(enters_within(&f, Class::Commit, 100).await.is_some());
}

#[tokio::test]
async fn a_batch_of_readers_that_never_ends_keeps_no_list_of_the_dead() {
    let f = fence();
    let _keep = enters_within(&f, Class::Snapshot, 100).await.unwrap();
    for _ in 0..1000 {
        let g = enters_within(&f, Class::Snapshot, 100).await.unwrap();
        drop(f.reading(g));
    }
    let n = f.inner.state().readings.len();
    assert!(
        n <= 512,
        "{n} readings kept for a batch of 1000 finished statements"
    );
}
