//! Replays the committed fuzz corpora on stable Rust, as part of `cargo test`: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` (the inputs that once crashed) goes
//! through the same check the cargo-fuzz target runs (`litefs_py_testkit::fuzz_checks`), so
//! what the fuzzer explored stays checked without nightly (docs/testing.md, "Fuzzing").

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use litefs_py_testkit::fuzz_checks::TARGETS;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("read a corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name}/ is empty or missing: every fuzz target commits its minimised \
             corpus (cargo fuzz cmin {name}; docs/testing.md, \"Fuzzing\")"
        );
        for path in corpus
            .iter()
            .chain(&files(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(path).expect("read a corpus file");
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz checks failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_fuzz_target_has_a_check() {
    // A target added under fuzz/fuzz_targets/ without an entry in TARGETS would never be
    // replayed here.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = files(&dir)
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
