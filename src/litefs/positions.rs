//! LiteFS's database positions: the `<db>-pos` files in its FUSE mount, one per database,
//! which say the TXID and checksum of its last transaction.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LiteFsError;

/// A LiteFS database position, as its `<db>-pos` file says: `%016x/%016x\n`, the TXID and the
/// post-apply checksum of the last transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    pub txid: u64,
    pub checksum: u64,
}

impl Pos {
    pub fn parse(text: &str) -> Option<Pos> {
        let (txid, checksum) = text.trim_end_matches('\n').split_once('/')?;
        // Exactly 16 hex digits: `from_str_radix` alone would also take a sign (`+fe3b…`).
        let hex = |s: &str| {
            (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(Pos {
            txid: hex(txid)?,
            checksum: hex(checksum)?,
        })
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:016x}", self.txid, self.checksum)
    }
}

/// Database name -> position.
pub type Positions = BTreeMap<String, Pos>;

/// Every `<db>-pos` file in `lower` (LiteFS's mount), parsed.
pub fn read_positions(lower: &Path) -> Result<Positions, LiteFsError> {
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        LiteFsError(format!("{what} {}: {e}", p.display()))
    };
    let mut out = Positions::new();
    for entry in std::fs::read_dir(lower).map_err(|e| fail("listing", lower, e))? {
        let entry = entry.map_err(|e| fail("listing", lower, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(db) = name.strip_suffix("-pos").filter(|d| !d.is_empty()) else {
            continue;
        };
        let path = entry.path();
        let text = std::fs::read_to_string(&path).map_err(|e| fail("reading", &path, e))?;
        let pos = Pos::parse(&text).ok_or_else(|| {
            LiteFsError(format!(
                "{}: not a LiteFS position: {text:?}",
                path.display()
            ))
        })?;
        out.insert(db.to_string(), pos);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `positions` fuzz target (fuzz/regressions/positions/): a `+` sign in place
    /// of a leading digit was accepted, so a file LiteFS never writes parsed as a position.
    #[test]
    fn only_litefs_own_form_is_a_position() {
        assert_eq!(
            Pos::parse("00000000000000a1/0fe3b2c1d0e9f8a7\n"),
            Some(Pos {
                txid: 0xa1,
                checksum: 0x0fe3_b2c1_d0e9_f8a7
            })
        );
        for bad in [
            "00000000000000a1/+fe3b2c1d0e9f8a7",
            "+0000000000000a1/0fe3b2c1d0e9f8a7",
            "00000000000000a1/0fe3b2c1d0e9f8a",
            "00000000000000a1",
        ] {
            assert_eq!(Pos::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn positions_from_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.db"), b"").unwrap();
        std::fs::write(
            d.path().join("app.db-pos"),
            "0000000000000002/00000000000000ff\n",
        )
        .unwrap();
        std::fs::write(d.path().join(".primary"), "node-1\n").unwrap();
        let p = read_positions(d.path()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p["app.db"].txid, 2);
        std::fs::write(d.path().join("x.db-pos"), "garbage").unwrap();
        let e = read_positions(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a LiteFS position"), "{e}");
    }
}
