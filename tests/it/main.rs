//! The integration suite: every case runs against the real `sessiond` binary on a real socket with a
//! real SQLite file in a temporary directory.

mod admission;
mod bench;
mod bruteforce;
mod crash;
mod faults;
mod fuzz;
mod hostile;
mod lifecycle;
mod model;
mod ops;
mod runtime;
mod share;
mod support;
mod tenancy;
mod workspace;
