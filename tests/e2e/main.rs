//! End-to-end scenarios. Each module is one thing a user does; each test boots real container
//! VMs under QEMU (TCG) from the bootstrap ISO and checks what the user would see.

mod bad_config;
mod exit_codes;
mod inspect_writeback;
mod kill_pid1;
mod missing_binary;
mod orphan_reaping;
mod run_as_user;
mod run_hello;
mod run_with_env_and_workdir;
