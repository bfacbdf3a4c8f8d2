//! What each fuzz target checks, one function per parser of outside input. The cargo-fuzz
//! targets (`fuzz/fuzz_targets/`, nightly) call these with the fuzzer's bytes, and
//! `tests/fuzz_corpus.rs` (stable, in `cargo test`) replays every committed corpus file through
//! the same functions, so a crash the fuzzer once found stays fixed (docs/testing.md, "Fuzzing").
//!
//! Each function panics on a broken property, which is what the fuzzer reports as a crash. Beyond
//! "no panic" each states what an accepted input must satisfy: a round trip through the
//! matching writer, or the invariants the rest of the program relies on.

use std::time::Duration;

use litefs_py::config::Config;
use litefs_py::fuzzing::{
    LeaseError, Pos, TimingStamp, check_session_id, parse_go_duration, parse_primary_info,
    parse_session_create,
};
use litefs_py::litefs::info::Info;
use litefs_py::litefs::yaml::{generate, go_duration};
use litefs_py_fuse::mountinfo;

/// A fuzz target's check: panics on a broken property.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("config", config),
    ("consul_bodies", consul_bodies),
    ("duration", duration),
    ("timing_header", timing_header),
    ("mountinfo", mountinfo_text),
    ("litefs_info", litefs_info),
    ("positions", positions),
];

/// litefs-py.yml: an accepted config passes validation, its effective YAML (`to_yaml`, what
/// `litefs-py config show` prints) is accepted again and is a fixed point, and LiteFS's config
/// can be generated from it or refused with an error (never a panic).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            // Errors are shown to the operator: they must render.
            let _ = e.to_string();
            return;
        }
    };
    c.validate().expect("an accepted config validates");
    assert!(c.node.id > 0, "node.id 0 accepted");
    assert!(
        c.lease.addr.ip().is_loopback(),
        "lease.addr {}",
        c.lease.addr
    );
    assert!(
        (Duration::from_millis(500)..=Duration::from_secs(60)).contains(&c.lease.ttl),
        "lease.ttl {:?} accepted",
        c.lease.ttl
    );
    assert!(
        c.raft.election_timeout_min < c.raft.election_timeout_max,
        "election timeouts out of order accepted: {:?}",
        c.raft
    );
    if !c.cluster.peers.is_empty() {
        assert_eq!(
            c.cluster.peers.get(&c.node.id),
            Some(&c.node.raft_addr),
            "this node must be one of the peers, at its raft-addr"
        );
    }
    // The timing every raft RPC carries is read back by the peers as sent.
    let stamp = TimingStamp::new(&c.raft, Some(c.lease.ttl));
    assert_eq!(TimingStamp::parse(&stamp.header()), Some(stamp));
    let yaml = c.to_yaml();
    let again = Config::parse(&yaml)
        .unwrap_or_else(|e| panic!("the effective config is refused: {e}\n{yaml}"));
    assert_eq!(
        again.to_yaml(),
        yaml,
        "the effective config is not a fixed point"
    );
    let _ = c.warnings();
    let _ = c.litefs_advertise_url();
    if let Err(e) = generate(&c) {
        let _ = e.to_string();
    }
}

/// The lease API's request bodies (LiteFS's Consul client, or any local process): the first
/// byte picks the body, the next two `lease.ttl` in ms for a session-create body.
pub fn consul_bodies(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let (ttl_ms, body) = match rest {
                [a, b, body @ ..] => (u64::from(u16::from_le_bytes([*a, *b])), body),
                _ => return,
            };
            let max_ttl = Duration::from_millis(ttl_ms.clamp(500, 60_000));
            match parse_session_create(body, max_ttl) {
                Ok(req) => {
                    assert!(
                        !req.ttl.is_zero() && req.ttl <= max_ttl,
                        "TTL {:?} accepted with lease.ttl {max_ttl:?}",
                        req.ttl
                    );
                    assert!(req.lock_delay <= Duration::from_secs(60), "{req:?}");
                    assert!(req.name.len() <= 256, "{req:?}");
                    // The TTL goes back to LiteFS as a Go duration in every session entry.
                    assert_eq!(parse_go_duration(&go_duration(req.ttl)), Ok(req.ttl));
                }
                Err(e) => assert!(matches!(e, LeaseError::BadRequest(_)), "{e:?}"),
            }
        }
        1 => match parse_primary_info(rest) {
            Ok((info, text)) => {
                assert!(rest.len() <= 4096);
                assert!(!info.hostname.is_empty() && !info.advertise_url.is_empty());
                // The raw text is what the other nodes' LiteFS is handed: it must say the same.
                let (again, _) = parse_primary_info(text.as_bytes())
                    .unwrap_or_else(|e| panic!("the stored lease value is refused: {e}"));
                assert_eq!(again, info);
            }
            Err(e) => assert!(matches!(e, LeaseError::BadRequest(_)), "{e:?}"),
        },
        _ => {
            let Ok(id) = std::str::from_utf8(rest) else {
                return;
            };
            if check_session_id(id).is_ok() {
                assert_eq!(id.len(), 36);
                assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
                assert_eq!(id.matches('-').count(), 4);
            }
        }
    }
}

/// Go durations (session TTLs and lock delays): what is accepted is written back by
/// `go_duration` (litefs.yml, session entries) to the same value.
pub fn duration(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_go_duration(s) {
        let written = go_duration(d);
        assert_eq!(parse_go_duration(&written), Ok(d), "{s:?} -> {written:?}");
        // Nothing accepted exceeds what Go's int64 nanoseconds can hold... or ours: u64.
        assert!(d.as_nanos() <= u128::from(u64::MAX));
    }
}

/// The `x-litefs-py-timing` header every raft RPC carries from another node: what is accepted
/// round-trips through `header()`, and a stamp never differs from itself.
pub fn timing_header(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(t) = TimingStamp::parse(s) {
        let header = t.header();
        assert_eq!(TimingStamp::parse(&header), Some(t), "{s:?} -> {header:?}");
        assert!(t.differences(&t).is_empty());
    }
}

/// `/proc/self/mountinfo`: every line accepted is rebuilt from its fields (escaped as the kernel
/// escapes them) and parses to the same mount; `escape` and `unescape` are inverse.
pub fn mountinfo_text(data: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let all = mountinfo::parse(text);
    assert!(all.len() <= text.lines().count());
    for m in all {
        let point = String::from_utf8(mountinfo::escape(m.point.as_os_str().as_bytes()))
            .expect("escaping keeps UTF-8");
        let source = String::from_utf8(mountinfo::escape(m.source.as_bytes()))
            .expect("escaping keeps UTF-8");
        let line = format!(
            "{} {} {} / {point} rw shared:1 - {} {source} rw",
            m.id, m.parent_id, m.dev, m.fstype
        );
        assert_eq!(mountinfo::parse_line(&line), Some(m), "rebuilt as {line:?}");
    }
    let escaped = mountinfo::escape(data);
    let back = mountinfo::unescape(std::str::from_utf8(&escaped).expect("escaping keeps UTF-8"));
    assert_eq!(back, text);
}

/// LiteFS's `GET /info` answer: an accepted answer rebuilt as JSON parses to the same, and the
/// derived facts agree with the fields.
pub fn litefs_info(data: &[u8]) {
    let Ok(info) = serde_json::from_slice::<Info>(data) else {
        return;
    };
    let hostname = info.primary_hostname();
    assert!(hostname.is_none_or(|h| !h.is_empty()));
    assert_eq!(info.primary_known(), info.is_primary || hostname.is_some());
    let mut json = serde_json::json!({
        "isPrimary": info.is_primary,
        "candidate": info.candidate,
    });
    if let Some(id) = &info.cluster_id {
        json["clusterID"] = id.clone().into();
    }
    if let Some(p) = &info.primary {
        json["primary"] = serde_json::json!({ "hostname": p.hostname });
    }
    let again: Info = serde_json::from_value(json).expect("rebuilt /info parses");
    assert_eq!(again, info);
}

/// A `<db>-pos` file: only LiteFS's own form (`%016x/%016x`, an optional newline) is accepted,
/// and it is written back identically.
pub fn positions(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(p) = Pos::parse(s) {
        let written = p.to_string();
        assert_eq!(Pos::parse(&written), Some(p));
        assert!(
            written.eq_ignore_ascii_case(s.trim_end_matches('\n')),
            "{s:?} accepted as {written:?}"
        );
    }
}
