//! sessfs: a FUSE directory whose PHP session files live in Redis.
//!
//! `fuse` translates kernel requests into calls on `fs`, which holds all the logic and is
//! generic over a `store::Store`; `keys` is the Redis key layout; `config` the command line;
//! `daemon` the process around the mount.

pub mod cache;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod keys;
pub mod lock;
pub mod store;
