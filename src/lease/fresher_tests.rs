//! The check before a term's first grant: no reachable LiteFS may be fresher than the local one
//! ([`super::freshest`]). Over the lease service with the fake raft.

use std::time::{Duration, Instant};

use super::freshest::{PeerLiteFs, Survey};
use super::records::{HANDOFF_KEY, HandoffRecord};
use super::test_support::{ADVERTISE, BODY, Fake, SESSION, params};
use super::{LEASE_KEY, LeaseService};
use crate::litefs::positions::{Pos, Positions};

fn at(txid: u64) -> Positions {
    let pos = Pos {
        txid,
        checksum: txid * 31,
    };
    [("app.db".to_string(), pos)].into()
}

/// This node at `mine`; node 3 at `theirs` (`None`: it has not reported).
fn survey(mine: u64, theirs: Option<u64>) -> Result<Option<Survey>, String> {
    let peer = match theirs {
        Some(t) => PeerLiteFs::Known(at(t)),
        None => PeerLiteFs::Unknown("LiteFS: connection refused".into()),
    };
    Ok(Some(Survey {
        mine: at(mine),
        peers: [(3, peer)].into(),
    }))
}

struct Node {
    fake: Fake,
    service: LeaseService<Fake>,
    session: String,
}

impl Node {
    /// Node 1, leader of `term` long enough that no wait applies, with a LiteFS session.
    fn leading(term: u64) -> Node {
        let fake = Fake::leader();
        fake.lead(term, Instant::now() - Duration::from_secs(60));
        let service = LeaseService::new(fake.clone(), params(), ADVERTISE.into())
            .with_silent_peer_wait(Duration::from_millis(300));
        let session = service.create_session(SESSION.as_bytes()).unwrap().id;
        Node {
            fake,
            service,
            session,
        }
    }

    async fn acquire(&self) -> bool {
        self.service
            .acquire(&self.session, BODY.as_bytes())
            .await
            .unwrap()
    }

    fn handoff_record(&self) -> Option<HandoffRecord> {
        let kv = &self.fake.0.lock().kv;
        serde_json::from_str(kv.get(HANDOFF_KEY)?).ok()
    }

    fn surveys(&self) -> usize {
        self.fake.0.lock().surveys
    }

    fn transfers(&self) -> Vec<(u64, u64)> {
        self.fake.0.lock().transfers.clone()
    }
}

#[tokio::test]
async fn a_fresher_peer_gets_raft_leadership_instead_of_a_grant() {
    let n = Node::leading(5);
    n.fake.set(|r| r.survey = survey(6, Some(7)));
    assert!(!n.acquire().await, "granted although node 3 is fresher");
    assert_eq!(n.transfers(), vec![(3, 5)]);
    // The term ends like a handoff's: fenced, recorded, so node 3 may grant at once in term 6.
    let record = n.handoff_record().expect("the end of term 5 is recorded");
    assert_eq!(
        record,
        HandoffRecord {
            released_term: 5,
            from: 1,
            to: 3,
            fresher_moves: 1,
        }
    );
    assert!(n.fake.record().is_none(), "no holder record");
    assert!(n.service.status().handing_off);
    // LiteFS retries: refused by the fence, without another survey or transfer.
    assert!(!n.acquire().await);
    assert_eq!((n.surveys(), n.transfers().len()), (1, 1));
    assert!(!n.fake.0.lock().kv.contains_key(LEASE_KEY));
}

#[tokio::test]
async fn a_node_as_fresh_as_its_peers_grants_and_asks_once_per_term() {
    let n = Node::leading(5);
    n.fake.set(|r| r.survey = survey(7, Some(7)));
    assert!(n.acquire().await);
    assert_eq!(n.fake.record().unwrap().term, 5);
    // Released and acquired again in the same term: this node's LiteFS was the primary, nothing
    // can be fresher; no second survey.
    n.service.release(&n.session).unwrap();
    assert!(n.acquire().await);
    assert_eq!(n.surveys(), 1);
    // A behind peer changes nothing either.
    let n = Node::leading(9);
    n.fake.set(|r| r.survey = survey(7, Some(3)));
    assert!(n.acquire().await);
    assert!(n.transfers().is_empty());
    // No LiteFS of its own (a `mount` or `witness` node): nothing to compare, granted.
    let n = Node::leading(2);
    assert!(n.acquire().await);
}

#[tokio::test]
async fn a_silent_peer_is_waited_for_then_given_up_on() {
    let n = Node::leading(5);
    n.fake.set(|r| r.survey = survey(7, None));
    assert!(!n.acquire().await, "granted without waiting for node 3");
    // Node 3 reports in time and is fresher: it gets leadership.
    n.fake.set(|r| r.survey = survey(7, Some(8)));
    assert!(!n.acquire().await);
    assert_eq!(n.transfers(), vec![(3, 5)]);

    let n = Node::leading(5);
    n.fake.set(|r| r.survey = survey(7, None));
    assert!(!n.acquire().await);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(n.acquire().await, "still waiting for a silent peer");
    assert!(n.transfers().is_empty());
}

#[tokio::test]
async fn unreadable_local_positions_refuse_until_readable() {
    let n = Node::leading(5);
    n.fake
        .set(|r| r.survey = Err("reading positions: LiteFS hung?".into()));
    assert!(!n.acquire().await);
    assert!(n.transfers().is_empty() && n.handoff_record().is_none());
    n.fake.set(|r| r.survey = survey(7, Some(7)));
    assert!(n.acquire().await);
}

#[tokio::test]
async fn the_next_leader_skips_the_wait_and_moves_stop_after_repeated_failures() {
    // Term 5 moved leadership to node 3, which did not take over; this node leads term 6. The
    // record waives the wait (leader for 0 s and yet answered at once)...
    let n = Node::leading(6);
    let moved = |moves| HandoffRecord {
        released_term: 5,
        from: 1,
        to: 3,
        fresher_moves: moves,
    };
    n.fake.set(|r| {
        r.since = Some(Instant::now());
        r.applied_term = Some(6);
        r.kv.insert(
            HANDOFF_KEY.into(),
            serde_json::to_string(&moved(1)).unwrap(),
        );
        r.survey = survey(6, Some(7));
    });
    let asked = Instant::now();
    assert!(!n.acquire().await);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the wait was not waived"
    );
    // ...and the move is counted on.
    assert_eq!(n.transfers(), vec![(3, 6)]);
    assert_eq!(n.handoff_record().unwrap().fresher_moves, 2);

    // After three such terms in a row this node grants: no primary at all is worse.
    let n = Node::leading(6);
    n.fake.set(|r| {
        r.kv.insert(
            HANDOFF_KEY.into(),
            serde_json::to_string(&moved(3)).unwrap(),
        );
        r.survey = survey(6, Some(7));
    });
    assert!(n.acquire().await);
    assert!(n.transfers().is_empty());
}
