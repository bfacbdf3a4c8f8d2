//! Fuzz target: see `litefs_py_testkit::fuzz_checks::mountinfo_text` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| litefs_py_testkit::fuzz_checks::mountinfo_text(data));
