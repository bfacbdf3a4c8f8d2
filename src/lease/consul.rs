//! Consul's wire formats, the subset LiteFS v0.5.14 uses (through hashicorp/consul/api v1.11.0):
//! the session-create body, session entries, KV pairs, Go durations, session ids.
//!
//! What the client library does with our answers decides the formats: it decodes a session's
//! `LockDelay` as a Go `time.Duration` (an integer of nanoseconds: a string would fail the whole
//! renewal), a KV pair's `Value` as base64, and it reads an acquire/release answer as "the body
//! contains `true`".

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::LeaseError;

/// `PUT /v1/session/create`'s body as LiteFS sends it:
/// `{"Behavior":"delete","LockDelay":"1000ms","Name":"litefs","NodeChecks":[],"TTL":"3s"}`.
/// Unknown fields are ignored, as Consul does (clients send `Node`, `Namespace`...).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionCreateBody {
    pub name: Option<String>,
    pub lock_delay: Option<Value>,
    pub behavior: Option<String>,
    #[serde(rename = "TTL")]
    pub ttl: Option<String>,
    pub checks: Option<Vec<Value>>,
    pub node_checks: Option<Vec<Value>>,
    pub service_checks: Option<Vec<Value>>,
}

/// What a session does to its lock when it is invalidated. Both end the same way here: the
/// holder is forgotten and no node names a primary (keeping the value, as Consul's `release`
/// does, would point replicas at a primary that is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// A validated session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub name: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
    pub behavior: Behavior,
}

fn bad(message: impl Into<String>) -> LeaseError {
    LeaseError::BadRequest(message.into())
}

/// Parses and checks a session-create body. `max_ttl` is `lease.ttl`: the lease arithmetic
/// (how long a new leader waits) holds only for sessions that expire within it. An empty body
/// (Consul's `Create(nil)`) gets `max_ttl`, never "no TTL": a session here always expires.
pub fn parse_session_create(body: &[u8], max_ttl: Duration) -> Result<SessionRequest, LeaseError> {
    let b: SessionCreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        SessionCreateBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| bad(format!("session body: {e}")))?
    };
    let checks = [&b.checks, &b.node_checks, &b.service_checks];
    if checks
        .iter()
        .any(|c| c.as_ref().is_some_and(|c| !c.is_empty()))
    {
        return Err(bad(
            "health checks are not supported: send NodeChecks: [] (sessions live by their TTL)",
        ));
    }
    let ttl = match b.ttl.as_deref() {
        None | Some("") => max_ttl,
        Some(s) => parse_go_duration(s).map_err(|e| bad(format!("TTL: {e}")))?,
    };
    if ttl.is_zero() || ttl > max_ttl {
        return Err(bad(format!(
            "TTL {} must be > 0 and at most lease.ttl ({}): regenerate litefs.yml with `litefs-py config litefs`",
            crate::litefs::yaml::go_duration(ttl),
            crate::litefs::yaml::go_duration(max_ttl)
        )));
    }
    let lock_delay = match &b.lock_delay {
        None => Duration::ZERO,
        Some(v) => parse_lock_delay(v)?,
    };
    let behavior = match b.behavior.as_deref() {
        None | Some("") | Some("release") => Behavior::Release,
        Some("delete") => Behavior::Delete,
        Some(other) => return Err(bad(format!("Behavior {other:?}: release or delete"))),
    };
    let name = b.name.unwrap_or_default();
    if name.len() > 256 {
        return Err(bad("Name is longer than 256 bytes"));
    }
    Ok(SessionRequest {
        name,
        ttl,
        lock_delay,
        behavior,
    })
}

/// Consul's rule: a string is a Go duration; a number below 1000 is seconds (a bare `15`),
/// anything larger is nanoseconds. At most 60 s, like Consul.
fn parse_lock_delay(v: &Value) -> Result<Duration, LeaseError> {
    let d = match v {
        Value::String(s) => parse_go_duration(s).map_err(|e| bad(format!("LockDelay: {e}")))?,
        Value::Number(n) => match n.as_u64() {
            Some(n) if n < 1000 => Duration::from_secs(n),
            Some(n) => Duration::from_nanos(n),
            None => {
                return Err(bad(format!(
                    "LockDelay {n}: not a whole non-negative number"
                )));
            }
        },
        other => return Err(bad(format!("LockDelay {other}: not a duration"))),
    };
    if d > Duration::from_secs(60) {
        return Err(bad("LockDelay is above 60s"));
    }
    Ok(d)
}

/// Go's `time.ParseDuration` for non-negative values: `3s`, `1000ms`, `1m30s`, `1.5s`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration (e.g. 3s, 1500ms)");
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(err());
    }
    let mut rest = rest;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        rest = tail;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() > 20 {
            return Err(err());
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        // Digits past nanosecond precision cannot matter; ignore them as Go does.
        let frac = &frac[..frac.len().min(18)];
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse::<u128>().map_err(|_| err())? * scale / 10u128.pow(frac.len() as u32)
        };
        total = int
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_value))
            .and_then(|v| v.checked_add(total))
            .ok_or_else(err)?;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| err())
}

/// A new random (version 4) UUID, Consul's session id format.
pub fn new_session_id() -> Result<String, LeaseError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| LeaseError::Internal(format!("random session id: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// A session id as a client sends it: a UUID in its 36-character text form.
pub fn check_session_id(id: &str) -> Result<(), LeaseError> {
    let ok = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!("{id:?} is not a session id (a UUID)")))
    }
}

/// A session as `PUT /v1/session/renew/<id>` returns it (in a one-element array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionEntry {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds: the client decodes a Go `time.Duration`.
    pub lock_delay: u64,
    pub behavior: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub checks: Vec<String>,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A KV entry as `GET /v1/kv/<key>` returns it (in a one-element array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub lock_index: u64,
    pub key: String,
    pub flags: u64,
    /// Base64 of the raw value.
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl KvPair {
    pub fn new(key: &str, raw: &[u8], session: Option<String>, index: u64) -> KvPair {
        KvPair {
            lock_index: u64::from(session.is_some()),
            key: key.to_string(),
            flags: 0,
            value: base64::engine::general_purpose::STANDARD.encode(raw),
            session,
            create_index: index,
            modify_index: index,
        }
    }

    pub fn raw_value(&self) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.value)
            .ok()
    }
}

/// The value LiteFS stores under the lease key (`litefs.PrimaryInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryInfo {
    pub hostname: String,
    #[serde(rename = "advertise-url")]
    pub advertise_url: String,
}

/// Checks an acquire body: LiteFS's `{"hostname":…,"advertise-url":…}`. The raw text is what
/// the other nodes will be given back, so it must be valid UTF-8 JSON naming both.
pub fn parse_primary_info(body: &[u8]) -> Result<(PrimaryInfo, String), LeaseError> {
    if body.len() > 4096 {
        return Err(bad("lease value is larger than 4 KiB"));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| bad("lease value is not UTF-8"))?
        .trim()
        .to_string();
    let info: PrimaryInfo = serde_json::from_str(&text)
        .map_err(|e| bad(format!("lease value is not LiteFS's primary info: {e}")))?;
    if info.hostname.is_empty() || info.advertise_url.is_empty() {
        return Err(bad("lease value needs a hostname and an advertise-url"));
    }
    Ok((info, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_durations() {
        for (s, d) in [
            ("0", Duration::ZERO),
            ("3s", ms(3000)),
            ("1000ms", ms(1000)),
            ("1.5s", ms(1500)),
            ("1m30s", ms(90_000)),
            ("2h0m0s", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("250\u{b5}s", Duration::from_micros(250)),
            (".5s", ms(500)),
            ("+7ns", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_go_duration(s), Ok(d), "{s}");
        }
        for s in [
            "",
            "3",
            "-1s",
            "1.2.3s",
            "s",
            "1x",
            "99999999999999999999999h",
            ".",
        ] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn session_create_as_litefs_sends_it() {
        let body = br#"{"Behavior":"delete","LockDelay":"1000ms","Name":"litefs","NodeChecks":[],"TTL":"3s"}"#;
        let r = parse_session_create(body, ms(3000)).unwrap();
        assert_eq!(
            r,
            SessionRequest {
                name: "litefs".into(),
                ttl: ms(3000),
                lock_delay: ms(1000),
                behavior: Behavior::Delete,
            }
        );
        // Older clients send Checks; an empty body gets lease.ttl; numbers follow Consul.
        let r = parse_session_create(br#"{"Checks":[],"LockDelay":15}"#, ms(3000)).unwrap();
        assert_eq!(
            (r.ttl, r.lock_delay, r.behavior),
            (ms(3000), ms(15_000), Behavior::Release)
        );
        assert_eq!(parse_session_create(b"", ms(2000)).unwrap().ttl, ms(2000));
        let err = |b: &[u8]| parse_session_create(b, ms(3000)).unwrap_err();
        assert!(
            matches!(err(br#"{"TTL":"10s"}"#), LeaseError::BadRequest(m) if m.contains("lease.ttl"))
        );
        assert!(matches!(err(br#"{"TTL":"0s"}"#), LeaseError::BadRequest(_)));
        assert!(matches!(
            err(br#"{"NodeChecks":["serfHealth"]}"#),
            LeaseError::BadRequest(_)
        ));
        assert!(matches!(
            err(br#"{"Behavior":"explode"}"#),
            LeaseError::BadRequest(_)
        ));
        assert!(matches!(
            err(br#"{"LockDelay":"2m"}"#),
            LeaseError::BadRequest(_)
        ));
        assert!(matches!(
            err(br#"{"LockDelay":true}"#),
            LeaseError::BadRequest(_)
        ));
        assert!(matches!(err(b"{not json"), LeaseError::BadRequest(_)));
        assert!(matches!(err(b"[]"), LeaseError::BadRequest(_)));
    }

    #[test]
    fn session_ids() {
        let id = new_session_id().unwrap();
        check_session_id(&id).unwrap();
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_session_id().unwrap());
        for bad in [
            "",
            "x",
            "6f1d7e0c-0f6b-4e4b-9d1e-2a2d5c1f0b3",
            "6f1d7e0c_0f6b-4e4b-9d1e-2a2d5c1f0b3a",
        ] {
            assert!(check_session_id(bad).is_err(), "{bad}");
        }
        check_session_id("6F1D7E0C-0f6b-4e4b-9d1e-2a2d5c1f0b3a").unwrap();
    }

    #[test]
    fn wire_formats_decode_as_the_go_client_expects() {
        let pair = KvPair::new(
            "litefs/primary",
            br#"{"hostname":"a"}"#,
            Some("s".into()),
            7,
        );
        let json = serde_json::to_value([&pair]).unwrap();
        assert_eq!(json[0]["Value"], "eyJob3N0bmFtZSI6ImEifQ==");
        assert_eq!(json[0]["Session"], "s");
        assert_eq!(json[0]["LockIndex"], 1);
        assert_eq!(pair.raw_value().unwrap(), br#"{"hostname":"a"}"#);
        let (info, raw) =
            parse_primary_info(br#"{"hostname":"node-a","advertise-url":"http://node-a:20202"}"#)
                .unwrap();
        assert_eq!(info.hostname, "node-a");
        assert!(raw.starts_with('{'));
        assert!(parse_primary_info(br#"{"hostname":"node-a"}"#).is_err());
        assert!(parse_primary_info(b"\xff").is_err());
        assert!(parse_primary_info(br#"{"hostname":"","advertise-url":"x"}"#).is_err());
    }
}
