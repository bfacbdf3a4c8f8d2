//! The lease API over real HTTP with a fake raft ([`super::test_support`]).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use super::state::HolderRecord;
use super::test_support::*;
use super::{LEASE_KEY, LeaseError, LeaseService, server};

#[tokio::test]
async fn litefs_becomes_primary_renews_and_releases() {
    let api = Api::start(Fake::leader()).await;
    // LiteFS's start-up: no cluster id, no primary.
    assert_eq!(
        api.call("GET", &format!("/v1/kv/{LEASE_KEY}/clusterid"), "")
            .await
            .0,
        404
    );
    assert!(api.primary().await.is_none());
    let id = api.session().await;
    assert_eq!(api.acquire(&id).await, (200, "true".into()));
    // Every node can now name the primary: the record went through raft.
    let pair = api.primary().await.unwrap();
    assert_eq!(pair.key, LEASE_KEY);
    // The pair names no session: the id is the holder's alone.
    assert_eq!(pair.session, None);
    assert_eq!(pair.lock_index, 1);
    assert_eq!(pair.raw_value().unwrap(), BODY.as_bytes());
    let record = api.fake.record().unwrap();
    assert_eq!(
        (record.node_id, record.term, record.value.as_str()),
        (1, 1, BODY)
    );
    // The cluster id: set once through raft, read back as Consul does (base64) or raw.
    let cid = format!("/v1/kv/{LEASE_KEY}/clusterid");
    assert_eq!(
        api.call("PUT", &cid, "LFSC0123456789ABCDEF").await,
        (200, "true".into())
    );
    let (status, body) = api.call("GET", &cid, "").await;
    assert_eq!(status, 200);
    let pairs: Vec<Value> = serde_json::from_str(&body).unwrap();
    let value = base64::engine::general_purpose::STANDARD
        .decode(pairs[0]["Value"].as_str().unwrap())
        .unwrap();
    assert_eq!(value, b"LFSC0123456789ABCDEF");
    assert_eq!(
        api.call("GET", &format!("{cid}?raw"), "").await.1,
        "LFSC0123456789ABCDEF"
    );
    assert_eq!(api.call("PUT", &cid, "LFSC0123456789ABCDEF").await.0, 200);
    assert_eq!(api.call("PUT", &cid, "LFSCFFFFFFFFFFFFFFFF").await.0, 409);
    // Renewal: 200 and the session, its LockDelay in nanoseconds (a Go time.Duration).
    let (status, body) = api
        .call("PUT", &format!("/v1/session/renew/{id}"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(entries[0]["ID"], id.as_str());
    assert_eq!(entries[0]["TTL"], "2s");
    assert_eq!(entries[0]["LockDelay"], 1_000_000_000u64);
    // Shutdown: release, destroy; then no primary anywhere.
    let release = format!("/v1/kv/{LEASE_KEY}?release={id}");
    assert_eq!(api.call("PUT", &release, "").await, (200, "true".into()));
    assert!(api.primary().await.is_none());
    assert_eq!(
        api.call("PUT", &format!("/v1/session/destroy/{id}"), "")
            .await
            .0,
        200
    );
    assert_eq!(
        api.call("PUT", &format!("/v1/session/renew/{id}"), "")
            .await
            .0,
        404
    );
    wait_until("the record is deleted", || api.fake.record().is_none()).await;
    api.stop().await;
}

#[tokio::test]
async fn a_follower_never_grants_and_names_the_current_primary() {
    let fake = Fake::leader();
    fake.follow(2, 4);
    let api = Api::start(fake.clone()).await;
    let id = api.session().await;
    assert_eq!(api.acquire(&id).await, (200, "false".into()));
    assert_eq!(
        api.call("PUT", &format!("/v1/session/renew/{id}"), "")
            .await
            .0,
        404
    );
    // Node 2's record from this term: named. From an earlier term, or by another node: not.
    let record = |node_id, term| HolderRecord {
        node_id,
        term,
        session: "00000000-0000-4000-8000-000000000002".into(),
        value: BODY.into(),
    };
    let put = |r: HolderRecord| {
        fake.set(|f| {
            f.kv.insert(LEASE_KEY.into(), serde_json::to_string(&r).unwrap());
        })
    };
    put(record(2, 4));
    assert_eq!(
        api.primary().await.unwrap().raw_value().unwrap(),
        BODY.as_bytes()
    );
    put(record(2, 3));
    assert!(api.primary().await.is_none());
    put(record(3, 4));
    assert!(api.primary().await.is_none());
    // Only the leader writes the cluster id.
    let cid = format!("/v1/kv/{LEASE_KEY}/clusterid");
    assert_eq!(api.call("PUT", &cid, "LFSC0123456789ABCDEF").await.0, 503);
    api.stop().await;
}

#[tokio::test]
async fn leadership_loss_ends_the_lease_and_a_new_leadership_waits() {
    let fake = Fake::leader();
    let api = Api::start(fake.clone()).await;
    let id = api.session().await;
    assert_eq!(api.acquire(&id).await.1, "true");
    // Quorum ack goes stale: the renewal is 404 (LiteFS demotes itself on it).
    fake.set(|f| f.fresh = false);
    assert_eq!(
        api.call("PUT", &format!("/v1/session/renew/{id}"), "")
            .await
            .0,
        404
    );
    assert!(api.primary().await.is_none());
    fake.set(|f| f.fresh = true);
    assert_eq!(api.acquire(&id).await.1, "true");
    // Deposed, then leader again in a later term: the old session is not renewed, and the new
    // leadership grants nothing before its wait (2 s TTL + 200 ms + 100 ms) is over.
    fake.follow(2, 2);
    assert_eq!(
        api.call("PUT", &format!("/v1/session/renew/{id}"), "")
            .await
            .0,
        404
    );
    fake.lead(3, Instant::now());
    let b = api.session().await;
    let started = Instant::now();
    assert_eq!(api.acquire(&b).await.1, "false");
    // 2.3 s left is more than half a TTL: refused at once, not held.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not held"
    );
    // The predecessor's record (term 1) is deleted by the new leader.
    wait_until("the old record is deleted", || api.fake.record().is_none()).await;
    api.stop().await;
}

#[tokio::test]
async fn an_acquire_near_the_end_of_the_wait_is_held_until_it_ends() {
    // Leader since 1.6 s: 0.7 s of its 2.3 s wait left, within half a TTL, so the acquire is
    // held and granted at the first safe instant.
    let fake = Fake::leader();
    let since = Instant::now() - Duration::from_millis(1600);
    let ready = since + params().new_leader_wait();
    fake.lead(1, since);
    let api = Api::start(fake).await;
    let id = api.session().await;
    let asked = Instant::now();
    assert!(
        asked < ready,
        "the test machine is too slow to test the hold"
    );
    // A plain acquire, answered `true`: it was held, not refused, and not granted early.
    assert_eq!(api.acquire(&id).await.1, "true");
    assert!(Instant::now() >= ready, "granted before the wait ended");
    assert_eq!(api.fake.record().unwrap().term, 1);
    api.stop().await;
}

#[tokio::test]
async fn a_failed_raft_write_refuses_the_acquire() {
    let fake = Fake::leader();
    let api = Api::start(fake.clone()).await;
    let id = api.session().await;
    fake.set(|f| f.fail_writes = true);
    assert_eq!(api.acquire(&id).await.1, "false");
    assert!(api.primary().await.is_none());
    fake.set(|f| f.fail_writes = false);
    assert_eq!(api.acquire(&id).await.1, "true");
    api.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_400_and_unknown_routes_404() {
    let api = Api::start(Fake::leader()).await;
    let id = api.session().await;
    let key = format!("/v1/kv/{LEASE_KEY}");
    for (method, path, body) in [
        ("PUT", "/v1/session/create".to_string(), "{not json"),
        ("PUT", "/v1/session/create".to_string(), r#"{"TTL":"1h"}"#),
        ("PUT", "/v1/session/create".to_string(), r#"{"TTL":"soon"}"#),
        (
            "PUT",
            "/v1/session/create".to_string(),
            r#"{"NodeChecks":["serfHealth"]}"#,
        ),
        ("PUT", "/v1/session/renew/not-a-uuid".to_string(), ""),
        ("PUT", "/v1/session/destroy/%00".to_string(), ""),
        ("PUT", format!("{key}?acquire=nope"), BODY),
        ("PUT", format!("{key}?acquire={id}"), "{}"),
        ("PUT", format!("{key}?acquire={id}"), "\u{0}\u{1}"),
        ("PUT", format!("{key}?acquire={id}&release={id}"), BODY),
        ("PUT", format!("{key}?acquire={id}&acquire={id}"), BODY),
        ("PUT", key.clone(), BODY),
        ("PUT", format!("{key}/clusterid"), "has spaces"),
        ("PUT", format!("{key}/clusterid"), ""),
        ("PUT", format!("{key}/clusterid?acquire={id}"), "LFSC"),
    ] {
        let (status, text) = api.call(method, &path, body).await;
        assert_eq!(status, 400, "{method} {path} {body:?}: {text}");
    }
    for (method, path) in [
        ("GET", "/v1/agent/self".to_string()),
        ("PUT", "/v1/kv/other/key".to_string()),
        ("GET", format!("{key}/other")),
        ("GET", "/".to_string()),
    ] {
        assert_eq!(api.call(method, &path, "").await.0, 404, "{method} {path}");
    }
    assert_eq!(api.call("DELETE", &key, "").await.0, 405);
    assert_eq!(
        api.call("PUT", "/v1/catalog/register", "{}").await,
        (200, "true".into())
    );
    // Still serving, still granting.
    assert_eq!(api.acquire(&id).await.1, "true");
    let (status, body) = api.call("GET", "/litefs-py/lease", "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["held"], true);
    assert_eq!(v["sessions"], 1);
    // No answer names a session: neither the state nor the KV pair.
    assert!(!body.contains(&id), "{body}");
    let (status, body) = api.call("GET", &key, "").await;
    assert_eq!(status, 200);
    assert!(!body.contains(&id) && !body.contains("Session"), "{body}");
    api.stop().await;
}

#[tokio::test]
async fn every_route_needs_the_token() {
    let api = Api::start(Fake::leader()).await;
    let id = api.session().await;
    let key = format!("/v1/kv/{LEASE_KEY}");
    let routes = [
        ("PUT", "/v1/session/create".to_string(), SESSION),
        ("PUT", format!("/v1/session/renew/{id}"), ""),
        ("PUT", format!("/v1/session/destroy/{id}"), ""),
        ("PUT", format!("{key}?acquire={id}"), BODY),
        ("PUT", format!("{key}?release={id}"), ""),
        ("GET", key.clone(), ""),
        ("GET", format!("{key}/clusterid?raw"), ""),
        ("GET", "/litefs-py/lease".to_string(), ""),
        ("GET", "/v1/agent/self".to_string(), ""),
    ];
    for (token, what) in [
        (None, "missing lease token"),
        (Some("wrong"), "wrong lease token"),
    ] {
        for (method, path, body) in &routes {
            let mut req = api
                .http
                .request(method.parse().unwrap(), format!("{}{path}", api.base))
                .body(body.to_string());
            if let Some(t) = token {
                req = req.header(server::TOKEN_HEADER, t);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 403, "{method} {path}");
            let text = resp.text().await.unwrap();
            assert!(text.contains(what), "{method} {path}: {text}");
            assert!(text.contains("X-Consul-Token"), "{text}");
        }
    }
    // The refused calls changed nothing: the session still exists and can take the lease.
    assert_eq!(api.acquire(&id).await.1, "true");
    // `Authorization: Bearer` is accepted too (Consul's other spelling).
    let resp = api
        .http
        .get(format!("{}/litefs-py/lease", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    api.stop().await;
}

#[tokio::test]
async fn an_acquire_for_another_advertise_url_is_refused() {
    let api = Api::start(Fake::leader()).await;
    let id = api.session().await;
    let other = r#"{"hostname":"node-a","advertise-url":"http://evil:20202"}"#;
    let (status, body) = api
        .call("PUT", &format!("/v1/kv/{LEASE_KEY}?acquire={id}"), other)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("http://evil:20202") && body.contains(ADVERTISE),
        "{body}"
    );
    assert!(api.primary().await.is_none());
    assert_eq!(api.acquire(&id).await.1, "true");
    api.stop().await;
}

#[tokio::test]
async fn the_api_listens_on_loopback_only() {
    for addr in ["0.0.0.0:0", "10.1.2.3:20321"] {
        let err = server::start(
            Fake::leader(),
            params(),
            addr.parse().unwrap(),
            ADVERTISE,
            &token(),
        )
        .await
        .err()
        .expect("refused");
        assert!(matches!(err, LeaseError::NotLoopback(_)), "{err}");
    }
}

#[tokio::test]
async fn the_waiver_reads_the_applied_term_before_the_handoff_record() {
    use super::records::{HANDOFF_KEY, HandoffRecord};
    let fake = Fake::leader();
    // A new leader of term 8, whose previous term ended in a handoff.
    fake.lead(8, Instant::now());
    let record = HandoffRecord {
        released_term: 7,
        from: 2,
        to: 1,
        fresher_moves: 0,
    };
    fake.set(|r| {
        r.kv.insert(HANDOFF_KEY.into(), serde_json::to_string(&record).unwrap());
        r.applied_term = Some(8);
    });
    let service = LeaseService::new(fake.clone(), params(), ADVERTISE.into());
    fake.set(|r| r.reads.clear());
    assert_eq!(service.status().grant_in_ms, Some(0));
    let reads = fake.0.lock().reads.clone();
    let applied = reads.iter().position(|r| r == "applied_term").unwrap();
    let record = reads
        .iter()
        .position(|r| *r == format!("get {HANDOFF_KEY}"))
        .unwrap();
    assert!(applied < record, "{reads:?}");
}
