//! One litefs-py.yml for every node: `${VAR}` expansion, `node.id: from-hostname`, the host
//! name as the default `node.hostname`, and `cluster.bootstrap: auto`.
//!
//! A StatefulSet, an autoscaling group or an Ansible role hands every node the same file; each
//! node derives what differs from its environment (docs/configuration.md, "One file for every
//! node").

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, invalid};

/// The value of `node.id` that derives the id from the host name's ordinal.
pub const FROM_HOSTNAME: &str = "from-hostname";

/// Expands `$VAR`, `${VAR}` and `${VAR:-default}` from the environment; `$$` is a literal `$`.
/// An unset variable without a default is an error naming it and its line: a silent empty
/// value would become a wrong address or id. So is a `${` not closed on its own line.
pub fn expand_env(text: &str) -> Result<String, ConfigError> {
    expand_with(text, |name| std::env::var(name).ok())
}

/// The inverse of [`expand_env`]: every `$` doubled, so that expanding gives `text` back. The
/// effective config (`Config::to_yaml`, what `litefs-py config check` prints) is written through
/// it: a value holding a literal `$` (written `$$` in the file) must not become a variable
/// reference when that output is read again.
pub fn escape_env(text: &str) -> String {
    text.replace('$', "$$")
}

/// Refuses a `${` whose `}` is not on the same line. The expansion would otherwise take the
/// text up to the next `}` anywhere below, lines included, as a variable name, or keep the `${`
/// as written when no `}` follows: either way a typo becomes a confusing error or a wrong value.
fn check_braces(text: &str) -> Result<(), ConfigError> {
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    return Err(invalid(
                        "litefs-py.yml",
                        format!(
                            "line {}: \"${{\" is not closed on its line: write ${{VAR}} or \
                             ${{VAR:-default}}, or $${{ for a literal \"${{\"",
                            i + 1
                        ),
                    ));
                };
                rest = &inner[end + 1..];
            } else {
                rest = after;
            }
        }
    }
    Ok(())
}

fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    check_braces(text)?;
    let context = |name: &str| -> Result<Option<String>, ()> {
        // `$5`, `$-`: not a variable name; left as written.
        if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Ok(None);
        }
        lookup(name).map(Some).ok_or(())
    };
    match shellexpand::env_with_context(text, context) {
        Ok(expanded) => Ok(expanded.into_owned()),
        Err(e) => {
            let line = text
                .lines()
                .position(|l| {
                    l.contains(&format!("${{{}", e.var_name))
                        || l.contains(&format!("${}", e.var_name))
                })
                .map_or(String::new(), |i| format!("line {}: ", i + 1));
            Err(invalid(
                "litefs-py.yml",
                format!(
                    "{line}${{{name}}} is not set: set {name} in the environment, or give a default with ${{{name}:-value}}",
                    name = e.var_name
                ),
            ))
        }
    }
}

/// This machine's host name: `$HOSTNAME` if set (Docker and Kubernetes set it to the
/// container's; a StatefulSet pod's is its name, e.g. `app-2`), else `gethostname()`.
pub fn system_hostname() -> String {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.trim().is_empty()
    {
        return h.trim().to_string();
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it (or
    // truncates, which the search for NUL below handles).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `app-2` → 3: the ordinal after the last `-`, plus one (node ids start at 1, ordinals at 0).
pub fn id_from_hostname(hostname: &str) -> Result<u64, String> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let ordinal = short
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "{FROM_HOSTNAME}: the host name {hostname:?} does not end in -<number> (as a StatefulSet's pods do, app-0, app-1 …): \
                 set node.id to a number, or to ${{VAR}} from the environment"
            )
        })?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| format!("{FROM_HOSTNAME}: ordinal {ordinal} is too large"))
}

/// `node.id`: a number, or `from-hostname`.
pub(super) fn node_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct IdVisitor;
    impl Visitor<'_> for IdVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a node id (a number > 0) or {FROM_HOSTNAME:?}")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("node id {v} must be > 0")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            // `${NODE_ID}` expands to text that YAML may have kept as a string when quoted.
            if let Ok(n) = v.trim().parse::<u64>() {
                return Ok(n);
            }
            if v == FROM_HOSTNAME {
                return id_from_hostname(&system_hostname()).map_err(E::custom);
            }
            Err(E::custom(format!(
                "{v:?} is not a node id: give a number > 0 or {FROM_HOSTNAME:?}"
            )))
        }
    }
    d.deserialize_any(IdVisitor)
}

/// `cluster.bootstrap`: who creates the cluster on its first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// This node never creates the cluster; it waits to be reached by a leader.
    #[default]
    Never,
    /// This node creates it (exactly one node says so).
    This,
    /// The lowest-id data node among `cluster.peers` creates it; the same file on every node.
    Auto,
}

impl Bootstrap {
    pub fn is_enabled(self) -> bool {
        self != Bootstrap::Never
    }
}

impl Serialize for Bootstrap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bootstrap::Never => s.serialize_bool(false),
            Bootstrap::This => s.serialize_bool(true),
            Bootstrap::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Bootstrap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BootstrapVisitor;
        impl Visitor<'_> for BootstrapVisitor {
            type Value = Bootstrap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bootstrap, E> {
                Ok(if v { Bootstrap::This } else { Bootstrap::Never })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bootstrap, E> {
                match v {
                    "auto" => Ok(Bootstrap::Auto),
                    "true" => Ok(Bootstrap::This),
                    "false" => Ok(Bootstrap::Never),
                    other => Err(E::custom(format!(
                        "{other:?}: cluster.bootstrap is true, false or \"auto\""
                    ))),
                }
            }
        }
        d.deserialize_any(BootstrapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD" => Some("app-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        let out = expand_with(
            "a: ${POD}.svc:7000\nb: $POD\nc: ${MISSING:-x}\nd: ${EMPTY}\ne: $$ $5\n",
            env,
        )
        .unwrap();
        assert_eq!(out, "a: app-1.svc:7000\nb: app-1\nc: x\nd: \ne: $ $5\n");
    }

    #[test]
    fn an_unset_variable_is_named_with_its_line() {
        let e = expand_with("node:\n  id: ${NODE_ID}\n", env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("${NODE_ID} is not set"), "{e}");
        assert!(e.contains("${NODE_ID:-value}"), "{e}");
    }

    #[test]
    fn an_unclosed_brace_is_refused_with_its_line() {
        // Found by the `config` fuzz target: the `${` took the text up to a `}` lines below.
        for text in [
            "a: 1\nb: x${y:1\nc: {}\n",
            "a: 1\nb: x${POD\n",
            "a: 1\nb: $$${y\n",
        ] {
            let e = expand_with(text, env).unwrap_err().to_string();
            assert!(e.contains("line 2: \"${\" is not closed"), "{text:?}: {e}");
        }
        // Escaped, or closed on its line, it is accepted.
        assert_eq!(
            expand_with("b: x$${y\nc: {}\n", env).unwrap(),
            "b: x${y\nc: {}\n"
        );
        assert_eq!(expand_with("b: ${POD} {\n", env).unwrap(), "b: app-1 {\n");
    }

    #[test]
    fn the_effective_config_keeps_a_literal_dollar() {
        // Found by the `config` fuzz target: `config check`'s output, read again, took the
        // hostname's `${` (written `$${` in the file) for a variable reference.
        let text = "node:\n  id: 1\n  hostname: a$${b$$HOME\n  raft-addr: 127.0.0.1:20301\n  \
                    http-addr: 127.0.0.1:20311\n";
        let c = crate::config::Config::parse(text).unwrap();
        assert_eq!(c.node.hostname, "a${b$HOME");
        let yaml = c.to_yaml();
        let again = crate::config::Config::parse(&yaml).unwrap();
        assert_eq!(again.node.hostname, "a${b$HOME");
        assert_eq!(again.to_yaml(), yaml);
    }

    #[test]
    fn escaped_text_expands_back() {
        for text in [
            "$",
            "$$",
            "a${b",
            "${POD}",
            "$POD",
            "x$${y}",
            "${MISSING",
            "$5 $-",
        ] {
            let escaped = escape_env(text);
            assert_eq!(expand_with(&escaped, env).unwrap(), text, "{escaped:?}");
        }
    }

    #[test]
    fn ordinals() {
        assert_eq!(id_from_hostname("app-0"), Ok(1));
        assert_eq!(id_from_hostname("my-app-12.app.default.svc"), Ok(13));
        for bad in ["app", "app-", "app-x", "app-1a", ""] {
            let e = id_from_hostname(bad).unwrap_err();
            assert!(e.contains("does not end in -<number>"), "{bad}: {e}");
        }
        assert!(id_from_hostname("a-18446744073709551615").is_err());
    }

    #[test]
    fn bootstrap_values() {
        let parse = |s: &str| serde_yaml::from_str::<Bootstrap>(s);
        assert_eq!(parse("true").unwrap(), Bootstrap::This);
        assert_eq!(parse("false").unwrap(), Bootstrap::Never);
        assert_eq!(parse("auto").unwrap(), Bootstrap::Auto);
        assert!(
            parse("maybe")
                .unwrap_err()
                .to_string()
                .contains("true, false or \"auto\"")
        );
        assert_eq!(
            serde_yaml::to_string(&Bootstrap::Auto).unwrap().trim(),
            "auto"
        );
    }
}
