//! `litefs-py`: high availability for SQLite apps on LiteFS, without Consul.
//!
//! The command line lives in the library ([`litefs_py::cli_main`]) so that the Python package's
//! `litefs-py` script runs the very same code.

fn main() {
    std::process::exit(litefs_py::cli_main(std::env::args_os()));
}
