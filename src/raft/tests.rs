//! Storage tests: openraft's conformance suite, restart, purge, damaged files, kill -9.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError, StorageHelper};
use tempfile::TempDir;

use super::store::DATA_FILE;
use super::*;

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn normal(term: u64, index: u64, request: Request) -> Entry {
    Entry::new_normal(log_id(term, index), request)
}

fn set(key: &str, value: &str) -> Request {
    Request::Set {
        key: key.into(),
        value: value.into(),
    }
}

fn membership(term: u64, index: u64, voters: &[NodeId]) -> Entry {
    let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
    openraft::testing::membership_ent::<TypeConfig>(term, 1, index, vec![voters])
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(stream::iter(items)).await.expect("apply");
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

/// Every suite case gets a fresh data dir, removed when the case drops the guard.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let (log, sm) = open_storage(dir.path(), 1).map_err(StoreError::into_storage_error)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(TempStoreBuilder)
        .await
        .expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopen_and_state_machine_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vote = Vote::new_committed(3, 1);
    {
        let (mut log, mut sm) = open_storage(dir.path(), 1).expect("open");
        log.save_vote(&vote).await.expect("vote");
        let entries = vec![
            membership(1, 1, &[1, 2, 3]),
            normal(
                1,
                2,
                Request::SetClusterId {
                    cluster_id: "LFSC0123".into(),
                },
            ),
            normal(1, 3, set("primary", "node-a")),
            normal(3, 4, set("advertise-url", "http://node-b:20202")),
            normal(3, 5, set("primary", "node-b")),
        ];
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_committed(Some(log_id(3, 5)))
            .await
            .expect("commit");
        apply(&mut sm, entries[..3].to_vec()).await;
        let snap = sm.build_snapshot().await.expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 3)));
        apply(&mut sm, entries[3..].to_vec()).await;
        log.purge(log_id(1, 2)).await.expect("purge");
    }

    let (mut log, mut sm) = open_storage(dir.path(), 1).expect("reopen");
    assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(3, 5))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(3, 5)));
    let entries = log.try_get_log_entries(0..100).await.expect("entries");
    assert_eq!(indexes(&entries), vec![3, 4, 5]);
    assert_eq!(
        entries[2].payload,
        EntryPayload::Normal(set("primary", "node-b"))
    );

    // Loaded from the snapshot: everything up to index 3.
    let (applied, members) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(members.log_id(), &Some(log_id(1, 1)));
    assert_eq!(sm.cluster_id().as_deref(), Some("LFSC0123"));
    assert_eq!(sm.get("primary").as_deref(), Some("node-a"));
    let current = sm
        .get_current_snapshot()
        .await
        .expect("snapshot")
        .expect("some");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 3)));

    // What Raft::new does at start: re-apply the committed entries after the snapshot.
    let initial = StorageHelper::new(&mut log, &mut sm)
        .with_id(1)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(initial.vote_ref(), &vote);
    assert_eq!(sm.last_applied(), Some(log_id(3, 5)));
    assert_eq!(sm.get("primary").as_deref(), Some("node-b"));
    assert_eq!(
        sm.get("advertise-url").as_deref(),
        Some("http://node-b:20202")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_truncate_really_remove_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = open_storage(dir.path(), 1).expect("open");
        let entries: Vec<Entry> = (1..=10).map(|i| Entry::new_blank(log_id(1, i))).collect();
        log.blocking_append(entries).await.expect("append");
        assert_eq!(log.stored_entry_count().expect("count"), 10);

        log.purge(log_id(1, 5)).await.expect("purge");
        assert_eq!(log.stored_entry_count().expect("count"), 5);
        let left = log.try_get_log_entries(0..=100).await.expect("read");
        assert_eq!(indexes(&left), vec![6, 7, 8, 9, 10]);

        log.truncate_after(Some(log_id(1, 7)))
            .await
            .expect("truncate");
        assert_eq!(log.stored_entry_count().expect("count"), 2);
    }
    let (mut log, _sm) = open_storage(dir.path(), 1).expect("reopen");
    assert_eq!(log.stored_entry_count().expect("count"), 2);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));

    // Purging everything leaves the last purged id as the last log id.
    log.purge(log_id(1, 7)).await.expect("purge all");
    assert_eq!(log.stored_entry_count().expect("count"), 0);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
}

#[tokio::test]
async fn cluster_id_is_set_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open_storage(dir.path(), 1).expect("open");
    apply(
        &mut sm,
        vec![
            normal(
                1,
                1,
                Request::SetClusterId {
                    cluster_id: "A".into(),
                },
            ),
            normal(
                1,
                2,
                Request::SetClusterId {
                    cluster_id: "B".into(),
                },
            ),
            normal(1, 3, set("k", "v")),
            normal(1, 4, Request::Delete { key: "k".into() }),
        ],
    )
    .await;
    assert_eq!(sm.cluster_id().as_deref(), Some("A"));
    assert_eq!(sm.get("k"), None);
    let data = sm.data();
    assert!(data.kv.is_empty());
}

/// Deterministic filler bytes (xorshift), so no RNG crate is needed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn open_err(dir: &Path, node_id: NodeId) -> StoreError {
    match open_storage(dir, node_id) {
        Ok(_) => panic!("open of {} should have failed", dir.display()),
        Err(e) => e,
    }
}

fn assert_names_file(err: &StoreError, dir: &Path) {
    let file = dir.join(DATA_FILE).display().to_string();
    assert!(
        err.to_string().contains(&file),
        "{err} does not name {file}"
    );
}

#[test]
fn random_bytes_give_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(DATA_FILE), noise(256 * 1024, 7)).expect("write");
    let err = open_err(dir.path(), 1);
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert_names_file(&err, dir.path());
}

#[test]
fn damaged_pages_give_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (mut log, _sm) = open_storage(dir.path(), 1).expect("open");
        let entries: Vec<Entry> = (1..=200)
            .map(|i| normal(1, i, set("key", &"x".repeat(500))))
            .collect();
        log.blocking_append(entries).await.expect("append");
    });
    // Overwrite everything after the header (redb's first page holds it) with noise.
    let path = dir.path().join(DATA_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    let len = bytes.len();
    bytes[4096..len].copy_from_slice(&noise(len - 4096, 11));
    std::fs::write(&path, bytes).expect("write");
    let err = open_err(dir.path(), 1);
    assert_names_file(&err, dir.path());
}

#[test]
fn data_dir_that_is_a_file_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("raft");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let err = open_err(&not_a_dir, 1);
    assert!(matches!(err, StoreError::DataDir { .. }), "{err:?}");
    assert!(err.to_string().contains(&not_a_dir.display().to_string()));
}

#[test]
fn foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = redb::Database::create(dir.path().join(DATA_FILE)).expect("create");
        let txn = db.begin_write().expect("txn");
        let table: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("other");
        txn.open_table(table)
            .expect("table")
            .insert("a", 1)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = open_err(dir.path(), 1);
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert_names_file(&err, dir.path());
}

#[test]
fn data_of_another_node_and_a_second_opener_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open_storage(dir.path(), 1).expect("open");
    let err = open_err(dir.path(), 1);
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    drop(first);

    let err = open_err(dir.path(), 2);
    assert!(
        matches!(
            err,
            StoreError::NodeId {
                stored: 1,
                configured: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names_file(&err, dir.path());
}

const CRASH_DIR_ENV: &str = "LITEFS_PY_TEST_CRASH_DIR";

/// The child half of `acknowledged_writes_survive_kill_9`: appends and votes as fast as it can,
/// printing each index once `append`'s callback fired and `save_vote` returned.
#[test]
#[ignore = "run by acknowledged_writes_survive_kill_9 in a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (mut log, _sm) = open_storage(Path::new(&dir), 1).expect("open");
        let start = log
            .get_log_state()
            .await
            .expect("state")
            .last_log_id
            .map_or(1, |l| l.index + 1);
        let mut out = std::io::stdout();
        for i in start.. {
            let entry = normal(i, i, set("k", &format!("{i}")));
            log.blocking_append([entry]).await.expect("append");
            log.save_vote(&Vote::new(i, 1)).await.expect("vote");
            writeln!(out, "acked {i}").expect("stdout");
            out.flush().expect("flush");
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args([
                "raft::tests::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked = 0u64;
        let mut lines = BufReader::new(stdout).lines();
        // Kill at a different moment each round, while the child is mid-way through commits.
        let run_for = Duration::from_millis(150 + 70 * round);
        let started = Instant::now();
        while started.elapsed() < run_for || acked == 0 {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().expect("index");
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        assert!(acked > 0, "round {round}: the child acknowledged nothing");

        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let (mut log, _sm) = open_storage(dir.path(), 1).expect("reopen after kill -9");
            let entries = log.try_get_log_entries(1..=acked).await.expect("entries");
            assert_eq!(indexes(&entries), (1..=acked).collect::<Vec<_>>());
            let vote = log.read_vote().await.expect("vote").expect("some vote");
            assert!(
                vote >= Vote::new(acked, 1),
                "round {round}: vote {vote} is older than acknowledged term {acked}"
            );
        });
    }
}
