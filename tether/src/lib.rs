//! The tether: PID 1 of a container VM (see `main.rs`). A library so the bench's bare init
//! can share the early-boot pieces (kernel filesystems, modules, finding disks).

pub mod attach;
pub mod blocking;
pub mod boot;
pub mod cgroup;
pub mod clock;
pub mod disk;
pub mod early;
pub mod etc;
pub mod launch;
pub mod log;
// The cast lints of Cargo.toml are not yet applied to the network code, which is being
// changed elsewhere: its casts are to be checked there.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "not yet reviewed for the cast lints (see above)"
)]
pub mod net;
pub mod output;
pub mod platform;
pub mod priority;
pub mod reaper;
pub mod runtime;
pub mod services;
pub mod session;
pub mod shutdown;
pub mod signals;
pub mod stdio;
pub mod supervisor;
pub mod user;
pub mod volumes;
pub mod writeback;
