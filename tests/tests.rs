//! The one integration-test binary (one link step). Each module tests one area against the
//! real `sluss` binary and real peers; shared helpers live in `util`.
mod util;

mod config;
mod formats;
mod pipeline;
mod pull;
mod remote;
mod seal;
mod sftp;
